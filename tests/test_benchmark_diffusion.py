"""Smoke tests of benchmarks/diffusion_rollout.py and benchmarks/diffusion_diversity.py (the real
scripts at tiny settings), and a hand-checked test of the diversity benchmark's SSIM."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite_positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def diversity():
    return load_script("diffusion_diversity")


def test_rollout_benchmark_reports_timings_and_overheads(tmp_path, capsys):
    bench = load_script("diffusion_rollout")
    threads = torch.get_num_threads()
    out = tmp_path / "rollout.json"
    report = bench.main(
        ["--images", "4", "--steps", "3", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    )

    assert torch.get_num_threads() == threads  # the benchmark's --threads 1 was undone
    assert report["setup"]["threads"] == 1
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["tiny", "wide", "no model"]
    assert rows["wide"]["params"] > 4 * rows["tiny"]["params"]
    for name, r in rows.items():
        methods = ["rollout", "euler"] + (["pipeline"] if r["params"] else [])
        assert sorted(r["times"]) == sorted(methods)
        for m in methods:
            assert len(r["times"][m]["seconds"]) == 1
            assert finite_positive(r[f"{m}_median_s"]), (name, m)
            assert finite_positive(r[f"{m}_median_cpu_s"]), (name, m)
        # the overhead is computed from those timings
        expected = r["rollout_median_s"] / r["euler_median_s"] - 1
        assert r["overhead"]["of_medians"] == pytest.approx(expected)
        assert math.isfinite(r["overhead"]["paired_median"])
        for m in ("rollout", "euler"):  # the loop's own time: total minus time in the model
            t = r["times"][m]
            outside = 1000 * (t["seconds"][0] - t["model_seconds"][0]) / 3
            assert r[f"{m}_outside_ms_per_step"] == pytest.approx(outside)
            assert 0 < t["model_seconds"][0] < t["seconds"][0]
        extra = r["rollout_outside_ms_per_step"] - r["euler_outside_ms_per_step"]
        assert r["sampler_ms_per_step"] == pytest.approx(extra)
        assert r["sampler_overhead"] == pytest.approx(extra * 3 / 1000 / r["euler_median_s"])
        assert r["log_probs_finite"]
        assert r["trajectory_shape"][:2] == [4, 4]  # (B, T + 1, ...): the trajectory was stored
    assert rows["no model"]["sampler_ms_per_step"] > 0  # noise, log-probs, storage: not free
    for name in ("tiny", "wide"):  # the pipeline and the hand-written loop compute the same thing
        assert rows[name]["pipeline_vs_euler_max_abs"] < 1e-5

    printed = capsys.readouterr().out
    assert "(a)/(b) - 1, end to end" in printed
    lines = printed.splitlines()
    for name in rows:
        row = next(line for line in lines if line.startswith(name + " "))
        a, b = (float(x) for x in row[len(name) :].split()[1:3])
        assert finite_positive(a) and finite_positive(b)
    assert "goal <= 5%" in printed
    assert out.is_file()


def test_diversity_benchmark_table(diversity, capsys):
    report = diversity.main(
        ["--prompts", "2", "--group-size", "3", "--steps", "3", "--window", "2"]
    )

    rows = {r["schedule"]: r for r in report["rows"]}
    expected = ["ode", "constant 0.5", "decaying 1.0 -> 0.0", "window 2 steps"]
    assert list(rows)[:4] == expected
    assert "window at 0-1" in rows and "window at 1-2" in rows
    for r in rows.values():
        assert len(r["pixel_l2_per_prompt"]) == 2
        for key in ("pixel_l2", "latent_l2", "ssim", "latent_scale_free"):
            assert math.isfinite(r[key]) and math.isfinite(r[f"{key}_std"]), (r["schedule"], key)
        assert all(-1 <= s <= 1 for s in r["ssim_per_prompt"])
        assert r["pixel_l2"] > 0 and r["latent_l2"] > 0
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

    printed = capsys.readouterr().out
    assert "pairwise SSIM (lower = more diverse)" in printed
    assert "NOT the paper's setting" in printed
    assert "whichever way it comes out" in printed
    for label in expected:
        row = next(line for line in printed.splitlines() if line.startswith(label + " "))
        numbers = row[len(label) :].replace("+-", " ").split()
        assert len(numbers) == 9 and all(math.isfinite(float(x)) for x in numbers)


def test_ssim_hand_checked_values(diversity):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    assert diversity.ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (diversity.ssim(x, 1 - x) < 0).all()  # the photographic negative
    assert diversity.ssim(x, x.flip(0)).tolist() == pytest.approx(
        diversity.ssim(x.flip(0), x).tolist()
    )
    # flat images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.8, 0.01**2
    flat_a, flat_b = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert diversity.ssim(flat_a, flat_b).item() == pytest.approx(expected, rel=1e-5)
    # an image smaller than the 11-pixel window still works (the window is cut to 7)
    small = torch.rand(1, 3, 7, 8)
    assert diversity.ssim(small, small).item() == pytest.approx(1.0, abs=1e-6)


def test_pairwise_metrics_count_every_pair_once(diversity):
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4), torch.full((3, 4, 4), 0.5)])
    distances = diversity.pairwise_rms(images)
    assert distances.tolist() == pytest.approx([1.0, 0.5, 0.5])  # (0,1), (0,2), (1,2)
    assert statistics.fmean(distances.tolist()) == pytest.approx(2 / 3)
    assert diversity.pairwise_ssim(torch.rand(4, 3, 11, 11)).shape == (6,)
    # scale-free latent diversity: 1 for independent draws, blind to the latents' overall size
    latents = torch.randn(32, 4096, generator=torch.Generator().manual_seed(0))
    images = torch.rand(32, 3, 8, 8)
    free = diversity.group_diversity(images, latents)["latent_scale_free"]
    assert free == pytest.approx(1.0, abs=0.02)
    assert diversity.group_diversity(images, 3 * latents)["latent_scale_free"] == pytest.approx(
        free
    )
    shared = latents + 2 * torch.randn(1, 4096)  # a common component: closer together
    assert diversity.group_diversity(images, shared)["latent_scale_free"] < 0.5
