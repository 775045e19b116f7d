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
line of ``per_prompt.jsonl`` is reused when its key (judge, scorers, threshold, expected image
size, and each image's name, size and modification time) matches; a killed run resumes from the
lines it wrote.

An image that cannot be judged is a *failed image*, not a reason to stop: one that does not
decode (a corrupt or truncated file, a text file named .png, a link to something else or to
nothing), one of the wrong size (`expected_image_size`), and one that is missing (a prompt
without an image, or with fewer than the generation's images per prompt). A failed image is
scored 0 on every question (the judge is not asked; CLIPScore and HPS leave it out), so a broken
generation lowers the accuracy instead of leaving the benchmark; each is named in a warning, and
the summary and report count them by kind (``failed_images``, ``failures``, ``failed_list``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
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
FAILURE_KINDS = ("missing", "unreadable", "wrong_size")
MAX_WARNINGS = 20
"""Failed images named one warning each; past this many, one warning gives the rest's count."""
MAX_REPORTED = 100
"""Failed images listed in summary.md (summary.json lists them all)."""


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
    image_size: tuple[int, int] | None = None,
    images_per_prompt: int | None = None,
) -> dict[str, Any]:
    """Judge, score and report (see the module docstring); returns the summary.

    `judge` is a judge or a no-argument factory of one (then `settings["judge"]` names it).
    `image_size` (width, height) and `images_per_prompt` come from the generation's settings when
    they are known; without them the size is `expected_image_size`'s and a prompt needs one image.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_paths = [p for it in items for p in images.get(it.id, ())]
    size = tuple(image_size) if image_size else expected_image_size(all_paths)
    spec = {
        "judge": (settings or {}).get("judge") or _judge_spec(judge),
        "clip": None if clip is None else repr(clip),
        "hps": None if hps is None else repr(hps),
        "threshold": threshold,
        "image_size": list(size) if size else None,
        "images_per_prompt": images_per_prompt,
        **(settings or {}),
    }
    per_prompt_path = out / "per_prompt.jsonl"
    done = _reusable_records(per_prompt_path, items, images, spec)
    todo = [it for it in items if it.id not in done]
    t0 = time.perf_counter()
    n_images = 0
    factory = None if hasattr(judge, "answer") else judge

    def get_judge():  # a factory: models load only when there is an image left to judge
        nonlocal judge, factory
        if factory is not None:
            judge, factory = factory(), None
        return judge

    with per_prompt_path.open("a", encoding="utf-8") as log:
        for chunk in _chunks(todo, images, batch_size):
            slots = _load_chunk(chunk, images, size, images_per_prompt)
            records = _judge_chunk(chunk, slots, get_judge, clip, hps, threshold, spec, images)
            for record in records:
                done[record["id"]] = record
                log.write(json.dumps(record) + "\n")
                n_images += sum(1 for im in record["images"] if not im.get("failed"))
            log.flush()
    seconds = time.perf_counter() - t0
    # rewrite in benchmark order, one line per prompt (the log may hold superseded lines)
    records = [done[it.id] for it in items if it.id in done]
    tmp = per_prompt_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(per_prompt_path)

    summary = summarise(records, spec)
    summary["missing_images"] = sum(1 for it in items if not images.get(it.id))
    summary["judged_this_run"] = {"images": n_images, "seconds": round(seconds, 3)}
    _warn_failed(summary["failed_list"], images)
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
        try:
            st = p.stat()
        except OSError:  # a link to nothing: the link itself (it fails to load all the same)
            try:
                st = p.lstat()
            except OSError:
                out.append([p.name, None, None])
                continue
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
    keys = {it.id: _record_key(it, images.get(it.id, []), spec) for it in items}
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
        n += max(len(images.get(item.id, ())), 1)
        if n >= batch_size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def expected_image_size(paths: Sequence[Path]) -> tuple[int, int] | None:
    """The (width, height) of more than half of the images that open, or None.

    The benchmark knows the size only when it generated the images (the generation's settings,
    kept in ``generation.json`` beside them); for images made elsewhere the size most of them
    share stands in for it, so that the odd ones out fail. With no size shared by more than half
    of the images there is no telling which are wrong: none fails for its size, and a warning
    says so. Only the headers are read.
    """
    from PIL import Image

    counts: Counter[tuple[int, int]] = Counter()
    for path in paths:
        try:
            with Image.open(path) as image:
                counts[image.size] += 1
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # fails when it is loaded
    if not counts:
        return None
    size, n = counts.most_common(1)[0]
    if 2 * n > counts.total():
        return size
    logger.warning(
        "no image size is shared by most images (%s): image sizes are not checked",
        ", ".join(f"{w}x{h}: {k}" for (w, h), k in counts.most_common()),
    )
    return None


def load_image(path: Path, size: Sequence[int] | None):
    """(RGB image, None), or (None, (kind, reason)) when `path` cannot be judged."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decodes it all: a truncated file fails here, not in the judge
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, UnidentifiedImageError):
            why = "not an image file PIL can read"
        elif isinstance(err, FileNotFoundError):
            why = "no such file"
        else:
            why = f"{type(err).__name__}: {err}"
        if path.is_symlink():
            why += f" (a link to {os.readlink(path)})"
        return None, ("unreadable", why)
    if size is not None and rgb.size != tuple(size):
        (w, h), (ew, eh) = rgb.size, size
        return None, ("wrong_size", f"{w}x{h}, expected {ew}x{eh}")
    return rgb, None


def _load_chunk(chunk, images, size, images_per_prompt) -> list[tuple]:
    """(item, path or None, RGB image or None, None or (kind, reason)) per image slot."""
    slots = []
    for item in chunk:
        paths = images.get(item.id, [])
        for path in paths:
            slots.append((item, path, *load_image(path, size)))
        wanted = images_per_prompt or 1
        for _ in range(max(wanted - len(paths), 0)):
            reason = f"{len(paths)} of {wanted} images" if images_per_prompt else "no image"
            slots.append((item, None, None, ("missing", reason)))
    return slots


def _judge_chunk(chunk, slots, get_judge, clip, hps, threshold, spec, images) -> list[dict]:
    good = [(item, pil) for item, _, pil, _ in slots if pil is not None]
    answers: list = []
    clip_scores: list = []
    hps_scores: list = []
    if good:
        pil = [p for _, p in good]
        answers = list(
            get_judge().answer(
                pil, [it.scene for it, _ in good], [list(it.questions) for it, _ in good]
            )
        )
        if len(answers) != len(good):
            raise ValueError(f"the judge gave {len(answers)} answers for {len(good)} images")
        clip_scores = _image_scores(clip, pil, [it.prompt for it, _ in good])
        hps_scores = _image_scores(hps, pil, [it.prompt for it, _ in good])
    j = 0  # the next judged image
    per_image: dict[str, list[dict]] = {it.id: [] for it in chunk}
    for item, path, _image, failure in slots:
        if failure is None:
            ans, clip_score, hps_score = answers[j], clip_scores[j], hps_scores[j]
            scored, j = ans, j + 1
        else:  # not asked; every question fails
            ans, clip_score, hps_score = {}, None, None
            scored = {q.id: 0.0 for q in item.questions}
        dep = score_questions(item.questions, scored, dependencies=True, threshold=threshold)
        indep = score_questions(item.questions, scored, dependencies=False, threshold=threshold)
        row = {
            "file": None if path is None else path.name,
            "failed": None if failure is None else failure[0],
            "answers": ans,
            "dependencies": dep.accuracy,
            "independent": indep.accuracy,
            "soft": dep.soft,
            "clip_score": clip_score,
            "hps": hps_score,
        }
        if failure is not None:
            row["reason"] = failure[1]
        if item.vocab == "geneval":
            row["geneval_correct"] = image_correct(dep.correct)
        per_image[item.id].append(row)
    records = []
    for item in chunk:
        rows = per_image[item.id]
        record = {
            "id": item.id,
            "key": _record_key(item, images.get(item.id, []), spec),
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


def _warn_failed(failed: Sequence[dict], images: dict[str, list[Path]]) -> None:
    """One warning per failed image (the first MAX_WARNINGS), naming its file."""
    for f in failed[:MAX_WARNINGS]:
        paths = {p.name: p for p in images.get(f["id"], [])}
        what = f"prompt {f['id']}" if f["file"] is None else str(paths.get(f["file"], f["file"]))
        kind = f["kind"].replace("_", " ")
        logger.warning("%s: %s (%s): scored as a failed image", what, kind, f["reason"])
    if len(failed) > MAX_WARNINGS:
        logger.warning(
            "%d more failed images (all are listed in summary.json)", len(failed) - MAX_WARNINGS
        )


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
    """Benchmark means over prompts, overall and by subject count (see the module docstring).

    ``images`` counts the images judged; ``failed_images`` the failed ones (``failures``: by
    kind, ``failed_list``: each, with its prompt, file and reason).
    """
    by_count: dict[int, list[dict]] = {}
    for r in records:
        by_count.setdefault(int(r["subject_count"]), []).append(r)
    judged = sum(
        1 for r in records for im in r["images"] for v in im["answers"].values() if v is not None
    )
    asked = sum(len(im["answers"]) for r in records for im in r["images"])
    failed = [
        {"id": r["id"], "file": im["file"], "kind": im["failed"], "reason": im.get("reason")}
        for r in records
        for im in r["images"]
        if im.get("failed")
    ]
    summary: dict[str, Any] = {
        "version": HICOPROMPT_VERSION,
        "settings": spec or {},
        "prompts": len(records),
        "images": sum(len(r["images"]) for r in records) - len(failed),  # judged
        "failed_images": len(failed),
        "failures": {kind: sum(f["kind"] == kind for f in failed) for kind in FAILURE_KINDS},
        "failed_list": failed,
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
        f"Judge: `{judge}`; {s['prompts']} prompts, {s['images']} images judged, "
        + _failures_text(s)
        + f"; {s['questions_unjudged']} of {s['questions_asked']} questions not judged.",
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
    failed = s.get("failed_list") or []
    if failed:
        lines += ["", "## Failed images (each scored 0 on every question)", ""]
        lines += ["| prompt | file | failure | reason |", "|---|---|---|---|"]
        for f in failed[:MAX_REPORTED]:
            reason = str(f["reason"]).replace("|", "/").replace("\n", " ")
            lines.append(f"| {f['id']} | {f['file'] or '-'} | {f['kind']} | {reason} |")
        if len(failed) > MAX_REPORTED:
            lines.append(f"\n{len(failed) - MAX_REPORTED} more in summary.json (failed_list).")
    return "\n".join(lines) + "\n"


def _failures_text(s: dict[str, Any]) -> str:
    n = s.get("failed_images", 0)
    if not n:
        return "0 failed"
    kinds = ", ".join(f"{k} {kind.replace('_', ' ')}" for kind, k in s["failures"].items() if k)
    return f"{n} failed ({kinds}: scored 0 on every question)"


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
