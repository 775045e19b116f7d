"""HiCoPrompt: the hierarchical compositional benchmark (HiCoGen; docs/algorithms.md §5-7), its
builder and its evaluator, and GenEval compatibility.

Build (deterministic by seed, the same files with any number of worker processes)::

    vrl bench build hicoprompt --seed 0 --out data/hicoprompt --vocab both
    vrl bench build hicoprompt --vocab world --splits test_1-3      # one split, seconds

Measured on 2 shared cores: the open vocabulary costs about 15 s of CPU for all 16,500 prompts;
the world vocabulary about 140 s, nearly all of it `vrl.world.sample_scene` checking that each
scene can be laid out (~8 ms a scene). Workers (one per core by default) divide the wall time.

writes per vocabulary (`open`: everyday objects; `world`: the shapes world, exactly checkable)
test.jsonl (3,000 prompts, 4-12 subjects), train.jsonl (12,000), test_4-6 / test_7-12 (subsets
of test), test_1-3 / train_1-3 (300 / 1,200 extra prompts with 1-3 subjects, for tiny 32 px
models) and manifest.json. A line: id, version, vocab, split, subject_count, prompt (one of
several phrasings), phrasing, scene (`Scene.to_dict()`), questions (the DSG question graph of
`Scene.questions()`: id, text, level, parents, target).

Evaluate a folder of images named by prompt id (`<id>.png`, or `<id>_<k>.png` for several),
or a model that generates them first (resumably, with or without the chain of synthesis)::

    vrl bench eval hicoprompt --prompts data/hicoprompt/world/test_1-3.jsonl \\
        --images my_images/ --judge exact
    vrl bench eval hicoprompt --prompts data/hicoprompt/open/test_4-6.jsonl \\
        --model /models/sd3.5-medium --lora runs/x/final --chain --judge vlm --vlm /models/qwen2.5-vl
    vrl bench eval geneval --prompts geneval/prompts/evaluation_metadata.jsonl \\
        --images geneval_outputs/ --judge geometry --detector /models/owlv2 \\
        --colour-clip-weights /models/clip-vit-l-14.bin

Judges (`vrl.bench.judges`, one protocol `answer(images, scenes, questions)`): exact, vlm,
geometry, openai, or combinations such as geometry+vlm. Scoring (`vrl.bench.scoring`) is
DSG's: a failed parent zeroes its children, which stay in the denominator; a second summary
without dependencies is written beside it. Modules import their heavy dependencies lazily.
"""
