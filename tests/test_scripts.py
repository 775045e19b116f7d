"""The benchmark and research scripts run: each is started as a subprocess at tiny settings (no
test imports `benchmarks/` or `experiments/`) and its JSON report is checked for its shape and
for figures that follow from the others. No assertion is made on a measured time: the timing
arithmetic is tested with fake clocks in test_timing.py, the diversity metrics in test_metrics.py.
"""

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(path: str, *args: str, timeout: float = 600) -> str:
    """Run a script from the repository root; its stdout (fails with its output on an error)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_rollout_benchmark_report_adds_up(tmp_path):
    out = tmp_path / "rollout.json"
    args = ["--images", "4", "--steps", "3", "--repeats", "2", "--warmup", "0"]
    printed = run_script("benchmarks/diffusion_rollout.py", *args, "--json", str(out))
    report = json.loads(out.read_text())

    assert report["setup"]["threads"] == 1
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["tiny", "wide", "no model"]
    assert rows["wide"]["params"] > 4 * rows["tiny"]["params"]
    for name, r in rows.items():
        methods = ["rollout", "euler"] + (["pipeline"] if r["params"] else [])
        assert sorted(r["times"]) == sorted(methods)
        for m in methods:
            t = r["times"][m]
            assert len(t["seconds"]) == len(t["cpu_seconds"]) == len(t["model_seconds"]) == 2
            assert r[f"{m}_median_s"] == pytest.approx(statistics.median(t["seconds"]))
        # the figures are computed from those timings
        a, b = r["times"]["rollout"]["seconds"], r["times"]["euler"]["seconds"]
        assert r["overhead"]["of_medians"] == pytest.approx(
            statistics.median(a) / statistics.median(b) - 1
        )
        paired = [x / y - 1 for x, y in zip(a, b, strict=True)]
        assert r["overhead"]["paired_median"] == pytest.approx(statistics.median(paired))
        for m in ("rollout", "euler"):  # the loop's own time: total minus time in the model
            t = r["times"][m]
            outside = [w - s for w, s in zip(t["seconds"], t["model_seconds"], strict=True)]
            expected = 1000 * statistics.median(outside) / 3
            assert r[f"{m}_outside_ms_per_step"] == pytest.approx(expected), (name, m)
        extra = r["rollout_outside_ms_per_step"] - r["euler_outside_ms_per_step"]
        assert r["sampler_ms_per_step"] == pytest.approx(extra)
        assert r["sampler_overhead"] == pytest.approx(extra * 3 / 1000 / r["euler_median_s"])
        assert r["log_probs_finite"]
        assert r["trajectory_shape"][:2] == [4, 4]  # (B, T + 1, ...): the trajectory was stored
    for name in ("tiny", "wide"):  # the pipeline and the hand-written loop compute the same thing
        assert rows[name]["pipeline_vs_euler_max_abs"] < 1e-5

    assert "(a)/(b) - 1, end to end" in printed
    lines = printed.splitlines()
    for name, r in rows.items():
        row = next(line for line in lines if line.startswith(name + " "))
        a, b = (float(x) for x in row[len(name) :].split()[1:3])
        assert a == pytest.approx(r["rollout_median_s"], abs=1e-4)
        assert b == pytest.approx(r["euler_median_s"], abs=1e-4)
    assert "goal <= 5%" in printed


@pytest.mark.slow
def test_grpo_step_benchmark_runs_vrl_alone(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--skip-trl", "--setups", "tiny", "--warmup", "1", "--steps", "2", "--betas", "0"]
    printed = run_script(
        "benchmarks/grpo_step.py", *args, "--work-dir", str(tmp_path / "work"), "--json", str(out)
    )
    report = json.loads(out.read_text())

    assert list(report["setups"]) == ["tiny"] and report["setups"]["tiny"]["image_tokens"] == 4
    row = report["results"]["tiny"]["0.0"]["vrl"]
    assert len(row["seconds"]) == 2 and len(row["cpu_seconds"]) == 2
    assert all(math.isfinite(s) for s in row["seconds"])
    assert row["median_s"] == pytest.approx(statistics.median(row["seconds"]))
    assert row["mean_s"] == pytest.approx(statistics.fmean(row["seconds"]))
    assert row["median_cpu_s"] == pytest.approx(statistics.median(row["cpu_seconds"]))
    assert row["peak_rss_mib"] > 0
    assert row["completion_length"] == 24  # the forced length took effect
    assert row["threads"] == 1
    assert "trl" not in report["results"]["tiny"]["0.0"]
    # the same trainer without shared prompt work, the "before" of the same run
    plain = report["results"]["tiny"]["0.0"]["vrl-plain"]
    assert plain["completion_length"] == 24 and len(plain["seconds"]) == 2
    assert "vrl unshared/shared:" in printed

    assert "median s/step" in printed
    vrl_rows = [line for line in printed.splitlines() if re.match(r"vrl\s+\d", line)]
    assert len(vrl_rows) == 1
    median, mean = (float(x) for x in vrl_rows[0].split()[1:3])
    assert median == pytest.approx(row["median_s"], abs=1e-3)
    assert mean == pytest.approx(row["mean_s"], abs=1e-3)
    assert "trl skipped" in printed


def test_grpo_step_table_shows_the_ratio_and_says_when_trl_is_missing(tmp_path):
    setup = {
        "params": 1_925_760,
        "trainable_params": 1_116_288,
        "prompts": 4,
        "group_size": 8,
        "new_tokens": 24,
        "threads": 1,
        "device": "cpu",
        "warmup": 2,
        "steps": 10,
    }
    vrl = {"median_s": 0.5, "mean_s": 0.55, "peak_rss_mib": 1000.0, "median_cpu_s": 0.4}
    trl = {
        "median_s": 0.75,
        "mean_s": 0.8,
        "peak_rss_mib": 1100.0,
        "median_cpu_s": 0.5,
        "version": "1.16.0",
    }
    both = tmp_path / "both.json"
    both.write_text(
        json.dumps(
            {"setup": setup, "results": {"0.0": {"vrl": vrl, "trl": trl}}, "trl_skipped": ""}
        )
    )
    printed = run_script("benchmarks/grpo_step.py", "--table", str(both), timeout=60)
    assert "ratio trl/vrl: 1.50" in printed
    assert "ratio of CPU time, trl/vrl: 1.25" in printed
    assert "trl 1.16.0" in printed

    alone = tmp_path / "alone.json"
    skipped = "trl is not installed (pip install 'vrl[peers]'): vrl only"
    alone.write_text(
        json.dumps({"setup": setup, "results": {"0.0": {"vrl": vrl}}, "trl_skipped": skipped})
    )
    printed = run_script("benchmarks/grpo_step.py", "--table", str(alone), timeout=60)
    assert "ratio" not in printed
    assert "trl is not installed" in printed

    # the report of several setups: one block each, with the unshared vrl row
    wide = {**setup, "description": "wider Qwen2.5-VL", "image_tokens": 256, "new_tokens": 128}
    plain = {**vrl, "median_s": 1.0}
    several = tmp_path / "several.json"
    several.write_text(
        json.dumps(
            {
                "setups": {"tiny": setup, "realistic": wide},
                "results": {
                    "tiny": {"0.0": {"vrl": vrl, "vrl-plain": plain, "trl": trl}},
                    "realistic": {
                        "0.04": {"vrl": vrl, "vrl-plain": plain, "trl": {**trl, "median_s": 1.5}}
                    },
                },
                "trl_skipped": "",
            }
        )
    )
    printed = run_script("benchmarks/grpo_step.py", "--table", str(several), timeout=60)
    assert "[tiny]" in printed and "[realistic]" in printed and "256 image tokens" in printed
    assert printed.count("vrl unshared/shared: 2.00") == 2
    assert "ratio trl/vrl: 1.50" in printed and "ratio trl/vrl: 3.00" in printed


@pytest.mark.slow
def test_diversity_experiment_table(tmp_path):
    out = tmp_path / "diversity.json"
    args = ["--prompts", "2", "--group-size", "3", "--steps", "3", "--window", "2"]
    printed = run_script("experiments/diffusion_diversity.py", *args, "--json", str(out))
    report = json.loads(out.read_text())

    rows = {r["schedule"]: r for r in report["rows"]}
    expected = ["ode", "constant 0.5", "decaying 1.0 -> 0.0", "window 2 steps"]
    assert list(rows)[:4] == expected
    assert "window at 0-1" in rows and "window at 1-2" in rows
    for r in rows.values():
        assert len(r["pixel_l2_per_prompt"]) == 2
        for key in ("pixel_l2", "latent_l2", "ssim", "latent_scale_free"):
            assert math.isfinite(r[key]) and math.isfinite(r[f"{key}_std"]), (r["schedule"], key)
            assert r[key] == pytest.approx(statistics.fmean(r[f"{key}_per_prompt"]))
        assert all(-1 <= s <= 1 for s in r["ssim_per_prompt"])
    # different seeds give different images even without noise
    assert all(d > 0 for d in rows["ode"]["pixel_l2_per_prompt"])
    assert all(d > 0 for d in rows["ode"]["latent_l2_per_prompt"])
    assert rows["ode"]["mean_level"] == 0
    for label, r in rows.items():  # every noisy schedule at the same mean noise level
        if label != "ode":
            assert r["mean_level"] == pytest.approx(0.5, abs=1e-6), label
    assert rows["decaying 1.0 -> 0.0"]["levels"][0][-1] == 0  # no noise left in the last step
    assert rows["decaying 1.0 -> 0.0"]["last_step_std"] == 0
    assert rows["constant 0.5"]["last_step_std"] > 0
    decaying, ode = rows["decaying 1.0 -> 0.0"]["ssim_per_prompt"], rows["ode"]["ssim_per_prompt"]
    diffs = [a - b for a, b in zip(decaying, ode, strict=True)]
    assert report["decaying_minus"]["ode"]["ssim"] == pytest.approx(statistics.fmean(diffs))

    assert "pairwise SSIM (lower = more diverse)" in printed
    assert "NOT the paper's setting" in printed
    assert "whichever way it comes out" in printed
    for label in expected:
        row = next(line for line in printed.splitlines() if line.startswith(label + " "))
        numbers = row[len(label) :].replace("+-", " ").split()
        assert len(numbers) == 9 and all(math.isfinite(float(x)) for x in numbers)


def test_grounding_table_reads_the_goals_off_the_report(tmp_path):
    """benchmarks/vlm_grounding.py --table: means over seeds, and each goal met or MISSED."""

    def scores(in_domain: float, out: float) -> dict:
        sets = {"in domain": in_domain, "held-out pairs": out, "dark grey": out, "4 subjects": out}
        return {name: {"acc": acc, "iou": acc / 2} for name, acc in sets.items()}

    def row(sft: tuple, rl: tuple) -> dict:
        times = {f"{arm}_{k}": 1.0 for arm in ("sft", "rl") for k in ("minutes", "cpu_minutes")}
        return {"sft": scores(*sft), "rl": scores(*rl), **times}

    report = {
        "eval": 10,
        "rule": "test",
        "before": scores(0.3, 0.1),
        "seeds": {"0": row((0.40, 0.20), (0.42, 0.31)), "1": row((0.40, 0.20), (0.40, 0.31))},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    printed = run_script("benchmarks/vlm_grounding.py", "--table", str(path), timeout=60)
    assert "in domain (Acc@0.5): 41.0 vs 40.0: met" in printed
    assert "out of domain (Acc@0.5, 3 sets pooled): 31.0 vs 20.0 + 10: met" in printed
    report["seeds"]["1"] = row((0.40, 0.20), (0.36, 0.29))  # RL behind in domain, +10.0 out
    path.write_text(json.dumps(report))
    printed = run_script("benchmarks/vlm_grounding.py", "--table", str(path), timeout=60)
    assert "41.0 vs 40.0" not in printed and "39.0 vs 40.0: MISSED" in printed
    assert "30.0 vs 20.0 + 10: met" in printed  # exactly 10 points is enough
    report["seeds"]["1"] = row((0.40, 0.20), (0.36, 0.27))  # +9.0 out of domain
    path.write_text(json.dumps(report))
    printed = run_script("benchmarks/vlm_grounding.py", "--table", str(path), timeout=60)
    assert "29.0 vs 20.0 + 10: MISSED" in printed


@pytest.mark.slow
def test_grounding_benchmark_starts_from_the_committed_checkpoint(tmp_path):
    """benchmarks/vlm_grounding.py with no --base: world:vlm-rec, and the SFT's training scenes
    written again (the same seed-0 file as the checkpoint's), not a rebuilt SFT."""
    out = tmp_path / "report.json"
    args = [
        "--seeds",
        "0",
        "--steps",
        "1",
        "--eval",
        "4",
        "--out",
        str(tmp_path),
        "--json",
        str(out),
    ]
    printed = run_script("benchmarks/vlm_grounding.py", *args)
    report = json.loads(out.read_text())
    assert report["base"].endswith("world-vlm-rec") and not (tmp_path / "base").exists()
    lines = (tmp_path / "sft-data" / "world_refer_train.jsonl").read_text().splitlines()
    assert len(lines) == 4000
    assert set(report["before"]) == set(report["seeds"]["0"]["rl"]) == {
        "in domain", "held-out pairs", "dark grey", "4 subjects",
    }  # fmt: skip
    assert "goal RL >= SFT in domain" in printed


@pytest.mark.slow
def test_grounding_benchmark_fine_tunes_a_broad_base_on_the_light_grey_slice(tmp_path):
    """A `vrl pretrain` run folder trained on several backgrounds keeps its training files per
    background: both arms are then fine-tuned on the light-grey slice (the committed SFT's
    scenes), not on a file the run folder does not have."""
    run = tmp_path / "broad"
    extra = ["steps=1", "batch_size=2", "train_per_task=4", "held_out_per_task=2",
             "train_background=white+light grey"]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "vrl.cli", "pretrain", "world-vlm-rec", "--out", str(run),
         "--extra", *extra],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert not (run / "data" / "world_refer_train.jsonl").exists()
    out = tmp_path / "report.json"
    run_script(
        "benchmarks/vlm_grounding.py", "--base", str(run), "--seeds", "0", "--steps", "1",
        "--eval", "2", "--out", str(tmp_path / "bench"), "--json", str(out),
    )  # fmt: skip
    assert json.loads(out.read_text())["base"] == str(run / "model")
    lines = (tmp_path / "bench" / "sft-data" / "world_refer_train.jsonl").read_text().splitlines()
    assert len(lines) == 4000 and all('"background": null' in line for line in lines)
