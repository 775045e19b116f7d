"""Score a benchmark's images with a judge: per-prompt JSONL, summary JSON, markdown, plots.

`evaluate_items(items, images, judge, out_dir)` asks the judge every question of every image,
scores each image with and without dependencies (`vrl.bench.scoring`), and writes to `out_dir`:

- ``per_prompt.jsonl``: one line per prompt with, per image, the judge's raw answers and the
  per-level accuracies, and their means over the prompt's images;
- ``summary.json``: Acc_exist / Acc_attribute / Acc_relationship / overall with dependencies
  (the headline), without them, and "soft" (gated probabilities); the same by subject count;
  CLIPScore and the HPS-style score (None unless their scorers were given); GenEval's task
  scores when the items come from GenEval metadata;
- ``summary.md``: the markdown table; ``acc_by_subjects.png``: accuracy by subject count.

A prompt's accuracy is the mean over its images, a benchmark's the mean over prompts (prompts
without a judged question at a level are left out of that level). Reruns skip what is done: a
line of ``per_prompt.jsonl`` is reused when its key (judge, scorers, threshold, and each image's
name, size and modification time) matches; a killed run resumes from the lines it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vrl.bench.build import HICOPROMPT_VERSION
from vrl.bench.data import BenchItem
from vrl.bench.geneval import geneval_summary, image_correct
from vrl.bench.scoring import ACC_KEYS, mean_accuracy, score_questions

logger = logging.getLogger(__name__)

COLUMN_NAMES = {
    "exist": "Acc_exist",
    "attribute": "Acc_attribute",
    "relation": "Acc_relationship",
    "all": "Acc_all",
}


def evaluate_items(
    items: Sequence[BenchItem],
    images: dict[str, list[Path]],
    judge,
    out_dir: str | Path,
    *,
    clip=None,
    hps=None,
    threshold: float = 0.5,
    batch_size: int = 8,
    settings: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Judge, score and report (see the module docstring); returns the summary.

    `judge` is a judge or a no-argument factory of one (then `settings["judge"]` names it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "judge": (settings or {}).get("judge") or _judge_spec(judge),
        "clip": None if clip is None else repr(clip),
        "hps": None if hps is None else repr(hps),
        "threshold": threshold,
        **(settings or {}),
    }
    per_prompt_path = out / "per_prompt.jsonl"
    done = _reusable_records(per_prompt_path, items, images, spec)
    todo = [it for it in items if it.id in images and it.id not in done]
    t0 = time.perf_counter()
    n_images = 0
    if todo and not hasattr(judge, "answer"):
        judge = judge()  # a factory: models load only when something is left to judge
    with per_prompt_path.open("a", encoding="utf-8") as log:
        for chunk in _chunks(todo, images, batch_size):
            records = _judge_chunk(chunk, images, judge, clip, hps, threshold, spec)
            for record in records:
                done[record["id"]] = record
                log.write(json.dumps(record) + "\n")
                n_images += len(record["images"])
            log.flush()
    seconds = time.perf_counter() - t0
    # rewrite in benchmark order, one line per prompt (the log may hold superseded lines)
    records = [done[it.id] for it in items if it.id in done]
    tmp = per_prompt_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(per_prompt_path)

    summary = summarise(records, spec)
    summary["missing_images"] = sum(1 for it in items if it.id not in images)
    summary["judged_this_run"] = {"images": n_images, "seconds": round(seconds, 3)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_report(summary))
    if plots and summary["by_subject_count"]:
        plot_by_subject_count(summary, out / "acc_by_subjects.png")
    return summary


def _judge_spec(judge) -> str:
    return getattr(judge, "spec", None) or getattr(judge, "name", type(judge).__name__)


def _fingerprint(paths: Sequence[Path]) -> list[list]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def _record_key(item: BenchItem, paths: Sequence[Path], spec: dict) -> str:
    payload = json.dumps(
        {"spec": spec, "images": _fingerprint(paths), "questions": [q.id for q in item.questions]},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _reusable_records(path: Path, items, images, spec) -> dict[str, dict]:
    if not path.exists():
        return {}
    keys = {it.id: _record_key(it, images[it.id], spec) for it in items if it.id in images}
    done = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if keys.get(record.get("id")) == record.get("key"):
                done[record["id"]] = record
    return done


def _chunks(items, images, batch_size):
    """Groups of whole prompts with about `batch_size` images each."""
    chunk, n = [], 0
    for item in items:
        chunk.append(item)
        n += len(images[item.id])
        if n >= batch_size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _judge_chunk(chunk, images, judge, clip, hps, threshold, spec) -> list[dict]:
    from PIL import Image

    flat = [(item, path) for item in chunk for path in images[item.id]]
    pil = [Image.open(p).convert("RGB") for _, p in flat]
    answers = judge.answer(
        pil, [it.scene for it, _ in flat], [list(it.questions) for it, _ in flat]
    )
    clip_scores = _image_scores(clip, pil, [it.prompt for it, _ in flat])
    hps_scores = _image_scores(hps, pil, [it.prompt for it, _ in flat])
    per_image: dict[str, list[dict]] = {it.id: [] for it in chunk}
    for j, ((item, path), ans) in enumerate(zip(flat, answers, strict=True)):
        dep = score_questions(item.questions, ans, dependencies=True, threshold=threshold)
        indep = score_questions(item.questions, ans, dependencies=False, threshold=threshold)
        row = {
            "file": path.name,
            "answers": ans,
            "dependencies": dep.accuracy,
            "independent": indep.accuracy,
            "soft": dep.soft,
            "clip_score": clip_scores[j],
            "hps": hps_scores[j],
        }
        if item.vocab == "geneval":
            row["geneval_correct"] = image_correct(dep.correct)
        per_image[item.id].append(row)
    records = []
    for item in chunk:
        rows = per_image[item.id]
        record = {
            "id": item.id,
            "key": _record_key(item, images[item.id], spec),
            "prompt": item.prompt,
            "subject_count": item.subject_count,
            "vocab": item.vocab,
            "images": rows,
            "dependencies": mean_accuracy([r["dependencies"] for r in rows]),
            "independent": mean_accuracy([r["independent"] for r in rows]),
            "soft": mean_accuracy([r["soft"] for r in rows]),
            "clip_score": _mean([r["clip_score"] for r in rows]),
            "hps": _mean([r["hps"] for r in rows]),
        }
        if item.vocab == "geneval":
            record["tag"] = item.extra.get("tag")
        records.append(record)
    return records


def _image_scores(scorer, pil_images, prompts) -> list[float | None]:
    if scorer is None:
        return [None] * len(pil_images)
    from torchvision.transforms.functional import pil_to_tensor

    scores = []
    for image, prompt in zip(pil_images, prompts, strict=True):  # sizes may differ
        x = pil_to_tensor(image).float()[None] / 255.0  # (1, 3, H, W)
        scores.append(float(scorer.score(x.to(scorer.device), [prompt]).item()))
    return scores


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(records: Sequence[dict], spec: dict | None = None) -> dict[str, Any]:
    """Benchmark means over prompts, overall and by subject count (see the module docstring)."""
    by_count: dict[int, list[dict]] = {}
    for r in records:
        by_count.setdefault(int(r["subject_count"]), []).append(r)
    judged = sum(
        1 for r in records for im in r["images"] for v in im["answers"].values() if v is not None
    )
    asked = sum(len(im["answers"]) for r in records for im in r["images"])
    summary: dict[str, Any] = {
        "version": HICOPROMPT_VERSION,
        "settings": spec or {},
        "prompts": len(records),
        "images": sum(len(r["images"]) for r in records),
        "questions_asked": asked,
        "questions_unjudged": asked - judged,
        "dependencies": mean_accuracy([r["dependencies"] for r in records]),
        "independent": mean_accuracy([r["independent"] for r in records]),
        "soft": mean_accuracy([r["soft"] for r in records]),
        "clip_score": _mean([r["clip_score"] for r in records]),
        "hps": _mean([r["hps"] for r in records]),
        "by_subject_count": {
            str(n): {
                "prompts": len(rs),
                "dependencies": mean_accuracy([r["dependencies"] for r in rs]),
                "independent": mean_accuracy([r["independent"] for r in rs]),
            }
            for n, rs in sorted(by_count.items())
        },
    }
    geneval = [r for r in records if r.get("vocab") == "geneval"]
    if geneval:
        summary["geneval"] = geneval_summary(
            [r.get("tag") or "unknown" for r in geneval],
            [[im.get("geneval_correct") for im in r["images"]] for r in geneval],
        )
    return summary


def _cell(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.3f}"


def markdown_report(summary: dict[str, Any]) -> str:
    s = summary
    judge = s["settings"].get("judge", "?")
    clip_note = "n/a (no CLIP weights given)"
    hps_note = "n/a (no HPS weights given)"
    lines = [
        f"# {s['settings'].get('benchmark', 'HiCoPrompt')} results ({s['version']})",
        "",
        f"Judge: `{judge}`; {s['prompts']} prompts, {s['images']} images"
        f" ({s.get('missing_images', 0)} prompts without images);"
        f" {s['questions_unjudged']} of {s['questions_asked']} questions not judged.",
        "",
        "| scoring | Acc_exist | Acc_attribute | Acc_relationship | Acc_all | CLIPScore | HPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in (
        ("with dependencies (DSG)", "dependencies"),
        ("without dependencies", "independent"),
    ):
        acc = s[key]
        lines.append(
            f"| {label} | "
            + " | ".join(_cell(acc[k]) for k in ACC_KEYS)
            + f" | {_cell(s['clip_score'], clip_note)} | {_cell(s['hps'], hps_note)} |"
        )
    lines += [
        "",
        "With dependencies a question counts only if every question it depends on is correct "
        "(a missing subject zeroes its attribute and relation questions). CLIPScore is "
        "2.5 * max(cos, 0); HPS is the cosine on the preference-tuned CLIP (HPSv2 convention).",
        "",
        "## By subject count (with dependencies)",
        "",
        "| subjects | prompts | Acc_exist | Acc_attribute | Acc_relationship | Acc_all |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in s["by_subject_count"].items():
        acc = row["dependencies"]
        lines.append(
            f"| {n} | {row['prompts']} | " + " | ".join(_cell(acc[k]) for k in ACC_KEYS) + " |"
        )
    if "geneval" in s:
        g = s["geneval"]
        tasks = list(g["tasks"])
        lines += [
            "",
            "## GenEval",
            "",
            "| Overall | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
            f"| {_cell(g['overall'])} | " + " | ".join(_cell(g["tasks"][t]) for t in tasks) + " |",
            "",
            f"{g['unscored_images']} images not scored (a question the judge could not answer).",
        ]
    return "\n".join(lines) + "\n"


def plot_by_subject_count(summary: dict[str, Any], path: str | Path) -> None:
    """Accuracy per level against the number of subjects; solid with dependencies, dashed without."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    counts = list(summary["by_subject_count"])
    xs = [int(n) for n in counts]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, colour in zip(ACC_KEYS, ("tab:blue", "tab:orange", "tab:green", "black"), strict=True):
        for mode, style in (("dependencies", "-"), ("independent", "--")):
            ys = [summary["by_subject_count"][n][mode][key] for n in counts]
            ys = [float("nan") if y is None else y for y in ys]
            label = COLUMN_NAMES[key] + ("" if mode == "dependencies" else " (no deps)")
            ax.plot(xs, ys, style, color=colour, marker="o", markersize=3, label=label)
    ax.set_xlabel("subjects in the prompt")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(xs)
    ax.set_title(f"accuracy by subject count, judge {summary['settings'].get('judge', '?')}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
