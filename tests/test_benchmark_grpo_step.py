"""Smoke test of benchmarks/grpo_step.py: the real script, vrl only, 1 warm-up + 2 timed steps."""

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("grpo_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vrl_only_run_reports_timings_and_memory(tmp_path, capsys):
    bench = load_script()
    out = tmp_path / "bench.json"
    report = bench.main(
        [
            "--skip-trl",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--betas",
            "0",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ]
    )

    row = report["results"]["0.0"]["vrl"]
    assert len(row["seconds"]) == 2
    assert all(math.isfinite(s) and s > 0 for s in row["seconds"])
    assert math.isfinite(row["median_s"]) and row["median_s"] > 0
    assert math.isfinite(row["mean_s"]) and row["mean_s"] > 0
    assert row["peak_rss_mib"] > 0
    assert len(row["cpu_seconds"]) == 2 and all(s > 0 for s in row["cpu_seconds"])
    assert row["completion_length"] == 24  # the forced length took effect
    assert row["threads"] == 1
    assert "trl" not in report["results"]["0.0"]

    printed = capsys.readouterr().out
    assert "median s/step" in printed
    vrl_rows = [line for line in printed.splitlines() if line.startswith("vrl ")]
    assert len(vrl_rows) == 1
    median, mean, peak = (float(x) for x in vrl_rows[0].split()[1:4])
    assert median > 0 and mean > 0 and peak > 0
    assert "trl skipped" in printed
    assert out.is_file()


def test_table_shows_ratio_and_says_when_trl_is_missing():
    bench = load_script()
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
    vrl = {"median_s": 0.5, "mean_s": 0.55, "peak_rss_mib": 1000.0}
    trl = {"median_s": 0.75, "mean_s": 0.8, "peak_rss_mib": 1100.0, "version": "1.16.0"}
    both = bench.format_table(
        {"setup": setup, "results": {"0.0": {"vrl": vrl, "trl": trl}}, "trl_skipped": ""}
    )
    assert "ratio trl/vrl: 1.50" in both
    assert "trl 1.16.0" in both

    alone = bench.format_table(
        {
            "setup": setup,
            "results": {"0.0": {"vrl": vrl}},
            "trl_skipped": "trl is not installed (pip install 'vrl[peers]'): vrl only",
        }
    )
    assert "ratio" not in alone
    assert "trl is not installed" in alone
