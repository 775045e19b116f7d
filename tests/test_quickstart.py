"""`vrl quickstart`, the README's main job: held-out accuracy rises, and the report says so."""

import json

from vrl.cli import main


def test_quickstart_improves_held_out_accuracy_and_reports_it(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())["vlm"]
    # measured (seed 0): 0% -> 100% on 128 held-out images, greedy decoding
    assert summary["held_out_accuracy_after"] >= summary["held_out_accuracy_before"] + 0.3
    after = [json.loads(line) for line in (tmp_path / "vlm_after.jsonl").open()]
    assert len(after) == 128
    assert sum(r["accuracy"] for r in after) / 128 == summary["held_out_accuracy_after"]
    report = (tmp_path / "report.md").read_text()
    assert f"{summary['held_out_accuracy_after']:.1%}" in report
    assert "held-out accuracy" in capsys.readouterr().out
