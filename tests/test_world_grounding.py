"""World referring expressions (the ``refer`` task): unambiguous on the picture, read by the user
data path, and scored on boxes converted out of the model's own coordinate convention."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from vrl.data import build_messages, load_vlm_r1_jsonl
from vrl.geometry import position_relations
from vrl.rewards import get_reward, parse_completion
from vrl.world import detect
from vrl.world.tasks import REFER_KINDS, write_world_tasks
from vrl.world.vocabulary import COLOURS, HELD_OUT_PAIRS, SHAPES

_NOUN = rf"(?:(small|large) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)})"
_EXPRESSION = re.compile(
    rf"Locate the (?:(larger|smaller) )?{_NOUN}"
    rf"(?: (left of|right of|above|below) the {_NOUN})? in the image\."
)


def _matching(found, size, colour, shape):
    return [
        d
        for d in found
        if d.shape == shape and colour in (None, d.colour) and size in (None, d.size)
    ]


def _resolve(question: str, found) -> list:
    """The detected shapes that the expression can mean, read from the picture alone."""
    match = _EXPRESSION.fullmatch(question)
    assert match is not None, question
    comparative, size, colour, shape, predicate, a_size, a_colour, a_shape = match.groups()
    candidates = _matching(found, size, colour, shape)
    if comparative:  # "the larger X": X names exactly two shapes, and they differ in size
        if len(candidates) != 2 or candidates[0].size == candidates[1].size:
            return candidates
        want = "large" if comparative == "larger" else "small"
        candidates = [d for d in candidates if d.size == want]
    if predicate:
        anchors = _matching(found, a_size, a_colour, a_shape)
        if len(anchors) != 1:
            return candidates + anchors  # an ambiguous anchor: fail below
        candidates = [
            d for d in candidates if predicate in position_relations(d.box, anchors[0].box)
        ]
    return candidates


@pytest.mark.parametrize(
    ("split", "subjects", "background"),
    [("train", (2, 3), None), ("test", (2, 3), None), ("train", (4, 4), "dark grey")],
)
def test_refer_expressions_name_exactly_one_shape_in_the_picture(
    tmp_path, split, subjects, background
):
    path = write_world_tasks(
        tmp_path, "refer", 60, seed=5, size=32, split=split,
        min_subjects=subjects[0], max_subjects=subjects[1], background=background,
    )  # fmt: skip
    samples = load_vlm_r1_jsonl(path)
    kinds = {kind: 0 for kind in REFER_KINDS}
    for sample in samples:
        found = detect(Image.open(sample.images[0]))
        assert subjects[0] <= len(found) <= subjects[1]
        meant = _resolve(sample.question, found)
        assert len(meant) == 1, (sample.question, [(d.colour, d.shape, d.box) for d in found])
        assert [round(v) for v in meant[0].box] == json.loads(sample.solution)
        if split == "test":
            assert (meant[0].colour, meant[0].shape) in HELD_OUT_PAIRS
        else:
            assert not {(d.colour, d.shape) for d in found} & HELD_OUT_PAIRS
        kinds[sample.extra["kind"]] += 1
    assert all(count == 20 for count in kinds.values())  # a third each
    # the twin kinds really need their words: the noun alone would name two shapes
    twins = [s for s in samples if s.extra["kind"] != "attribute"]
    for sample in twins:
        found = detect(Image.open(sample.images[0]))
        noun = _EXPRESSION.fullmatch(sample.question).group(4)
        assert sum(d.shape == noun for d in found) >= 2


def test_world_refer_files_take_the_user_rec_path(tmp_path):
    """A world file and a hand-written user file in VLM-R1's REC form load, prompt and score the
    same way: same loader, same template, same parser."""
    world = load_vlm_r1_jsonl(write_world_tasks(tmp_path / "w", "refer", 4, seed=0, size=32))
    user_lines = []
    for sample in world:
        image = tmp_path / "user" / Path(sample.images[0]).name
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(Path(sample.images[0]).read_bytes())
        user_lines.append(
            {
                "image": image.name,
                "problem": sample.question,
                "solution": json.loads(sample.solution),
            }
        )
    user_file = tmp_path / "user" / "rec.jsonl"
    user_file.write_text("".join(json.dumps(line) + "\n" for line in user_lines))
    user = load_vlm_r1_jsonl(user_file)
    for mine, theirs in zip(world, user, strict=True):
        assert mine.question.startswith("Locate the ") and "<image>" not in mine.question
        assert (mine.question, mine.solution) == (theirs.question, theirs.solution)
        assert build_messages(mine, "rec_answer_only") == build_messages(theirs, "rec_answer_only")
        assert build_messages(mine, "rec") == build_messages(theirs, "rec")
    rows = [{"solution": s.solution} for s in world + user]
    truth = [parse_completion(f"<answer>{s.solution}</answer>") for s in world + user]
    assert get_reward("rec_iou")(truth, rows) == [1.0] * 8
    assert get_reward("format_rec_answer")(truth, rows) == [1.0] * 8
    shifted = [
        parse_completion(f"<answer>{[v + 20 for v in json.loads(s.solution)]}</answer>")
        for s in world + user
    ]
    assert max(get_reward("rec_iou")(shifted, rows)) == 0.0
    assert get_reward("format_rec_answer")(
        [parse_completion("<answer>red</answer>")], rows[:1]
    ) == [0.0]


@pytest.fixture(scope="module")
def tiny_adapter():
    """A tiny Qwen2.5-VL (resized_pixels convention, 112 px input) with number tokens."""
    from vrl.models.tiny import build_tiny_processor, build_vlm_tokenizer
    from vrl.models.vlm import VLMAdapter
    from vrl.pretrain.vlm import build_model

    tokenizer = build_vlm_tokenizer(number_tokens=113)
    processor = build_tiny_processor("qwen2_5_vl", tokenizer, 112 * 112, 112 * 112)
    return VLMAdapter(build_model(tokenizer, seed=0), processor)


def test_number_tokens_make_each_coordinate_one_token(tiny_adapter):
    tokenizer = tiny_adapter.tokenizer
    for value in (0, 7, 38, 99, 112):
        ids = tokenizer(str(value), add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids) == str(value)
    text = "<answer>[38, 10, 112, 5]</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer("113", add_special_tokens=False)["input_ids"]) == 2  # "11" "3" or so


def test_a_box_in_the_models_convention_is_converted_before_iou(tmp_path, tiny_adapter):
    """The SFT target is the box in the model's 112 px input; the trainer's reward path and the
    evaluation map it back to the 32 px image before any IoU."""
    from vrl.evaluate import evaluate_rec
    from vrl.pretrain.vlm import answer_text, model_box_map
    from vrl.trainers.vlm_grpo import box_transform

    adapter = tiny_adapter
    assert adapter.box_convention == "resized_pixels"
    samples = load_vlm_r1_jsonl(write_world_tasks(tmp_path, "refer", 6, seed=2, size=32))
    images = [[Image.open(s.images[0]).convert("RGB")] for s in samples]
    batch = adapter.prepare_inputs([build_messages(s, "rec_answer_only") for s in samples], images)
    assert set(batch.input_sizes) == {(112, 112)} and set(batch.original_sizes) == {(32, 32)}
    answers = [answer_text(s, model_box_map(adapter, (32, 32))) for s in samples]
    for sample, answer in zip(samples, answers, strict=True):
        truth, said = json.loads(sample.solution), json.loads(re.search(r"\[.*\]", answer).group(0))
        assert said == [round(3.5 * v) for v in truth]  # 112 / 32 = 3.5
    rows = [{"solution": s.solution} for s in samples]
    converted = [
        parse_completion(text, box_transform(adapter, orig, inp))
        for text, orig, inp in zip(answers, batch.original_sizes, batch.input_sizes, strict=True)
    ]
    assert min(get_reward("rec_iou")(converted, rows)) > 0.9  # rounding to integers only
    raw = [parse_completion(text) for text in answers]  # read as if it were image pixels
    assert max(get_reward("rec_iou")(raw, rows)) < 0.5

    def fake_generate(model, batch, **kwargs):  # the model "answers" the SFT targets
        return SimpleNamespace(texts=answers[: len(batch.texts)])

    adapter.generate, real = fake_generate, adapter.generate
    try:
        scores = evaluate_rec(adapter, adapter.model, samples, "rec_answer_only", progress=False)
    finally:
        adapter.generate = real
    assert scores["acc@0.5"] == 1.0 and scores["mean_iou"] > 0.9


def test_refer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 2 subjects"):
        write_world_tasks(tmp_path, "refer", 1, min_subjects=1, max_subjects=2)
    with pytest.raises(ValueError, match="background must be"):
        write_world_tasks(tmp_path, "refer", 1, background="purple")


def test_the_committed_grounding_checkpoint_answers_boxes_the_rec_path_reads(tmp_path):
    """world:vlm-rec loads by name, answers held-out questions with boxes that the REC parser
    reads and maps back to image pixels, and grounds well above its untrained init."""
    from vrl.evaluate import greedy_completions
    from vrl.models.paths import resolve_model_path
    from vrl.models.vlm import VLMAdapter
    from vrl.pretrain.grounding import NAME, TEMPLATE, WEIGHTS_DIR, evaluate_sets, untrained_model
    from vrl.pretrain.vlm import MAX_BOX_TOKENS

    folder = Path(resolve_model_path(NAME))
    assert folder == WEIGHTS_DIR
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    assert (folder / "model.safetensors").stat().st_size < 15e6
    card = (folder / "README.md").read_text()
    assert "vrl pretrain world-vlm-rec --seed 0" in card and "| in domain |" in card
    adapter = VLMAdapter.from_pretrained(folder)
    assert adapter.family == "qwen2_5_vl" and adapter.box_convention == "resized_pixels"
    samples = load_vlm_r1_jsonl(write_world_tasks(tmp_path, "refer", 24, seed=10_000, size=32))
    results = greedy_completions(
        adapter, adapter.model, samples, TEMPLATE, max_new_tokens=MAX_BOX_TOKENS, progress=False
    )
    for _, text, parsed in results:
        assert re.fullmatch(r"<answer>\[\d+, \d+, \d+, \d+\]</answer>", text), text
        (box,) = parsed.boxes  # in the 32 px image's pixels, mapped back from the 112 px input
        assert all(-1 <= v <= 33 for v in box), box
    rows = [{"solution": s.solution} for s in samples]
    ious = get_reward("rec_iou")([p for _, _, p in results], rows)
    assert sum(v >= 0.5 for v in ious) >= 4  # the card: ~40% in domain on 200 questions
    scores, _ = evaluate_sets(adapter, untrained_model(adapter), {"in domain": samples})
    assert scores["in domain"]["acc"] == 0.0


def test_pretrain_world_vlm_rec_writes_the_card_with_the_four_sets(tmp_path, capsys):
    """`vrl pretrain world-vlm-rec` (tiny settings): the grounding recipe, a loadable folder, and
    a card that gives the command and each evaluation set's figures from summary.json."""
    from vrl.cli import main
    from vrl.models.vlm import VLMAdapter
    from vrl.pretrain.grounding import SETS, SFT_RECIPE

    out = tmp_path / "rec"
    extra = ["steps=2", "train_per_task=8", "held_out_per_task=2", "batch_size=4", "eval_every=2"]
    argv = ["pretrain", "world-vlm-rec", "--out", str(out), "--threads", "1", "--extra", *extra]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary["settings"][k] for k in ("tasks", "template", "rope_theta")} == {
        k: SFT_RECIPE[k] for k in ("tasks", "template", "rope_theta")
    }
    assert list(summary["sets"]) == list(SETS)
    card = (out / "model" / "README.md").read_text()
    assert "vrl pretrain world-vlm-rec --seed 0 --threads 1 --extra" in card
    for name, row in summary["sets"].items():
        assert f"| {name} | {row['acc']:.1%} | {row['iou']:.1%} |" in card
    printed = capsys.readouterr().out
    assert re.search(r"in domain +Acc@0\.5 +\d+\.\d%", printed)
    assert VLMAdapter.from_pretrained(out / "model").box_convention == "resized_pixels"
