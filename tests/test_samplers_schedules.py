"""Noise-level schedules: HiCoGen's decaying cosine, windows, configs, equal means."""

import math

import pytest
import torch

from vrl.samplers import (
    ConstantNoise,
    DecayingNoise,
    WindowNoise,
    equal_mean,
    from_config,
)


def test_constant():
    levels = ConstantNoise(0.7).levels(5)
    assert levels.dtype == torch.float32 and torch.equal(levels, torch.full((5,), 0.7))
    with pytest.raises(ValueError, match="level"):
        ConstantNoise(-1.0)


@pytest.mark.parametrize("num_steps", [2, 9, 10, 40])
def test_decaying_ends_monotone_cosine(num_steps):
    schedule = DecayingNoise(eta_max=1.0, eta_min=0.1)
    levels = schedule.levels(num_steps)
    assert levels.shape == (num_steps,) and levels.dtype == torch.float32
    assert levels[0].item() == pytest.approx(1.0, abs=0) and levels[-1] == torch.tensor(0.1)
    assert (levels[1:] <= levels[:-1]).all()
    for i in range(num_steps):
        cosine = 0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * i / (num_steps - 1)))
        assert levels[i].item() == pytest.approx(cosine, abs=1e-7)
    if num_steps % 2 == 1:  # the middle step sits at t = T / 2: cos = 0
        assert levels[num_steps // 2].item() == pytest.approx(0.55, abs=1e-7)
    # it is not linear: the first half keeps more noise than a straight line would
    assert levels[num_steps // 4] >= 1.0 - 0.9 * (num_steps // 4) / (num_steps - 1)


def test_decaying_validation_and_single_step():
    assert torch.equal(DecayingNoise(0.8, 0.2).levels(1), torch.tensor([0.8]))
    with pytest.raises(ValueError, match="eta_min"):
        DecayingNoise(eta_max=0.1, eta_min=0.5)


def test_window_fixed_start():
    schedule = WindowNoise(ConstantNoise(0.7), size=3, start=2)
    levels = schedule.levels(8)
    assert torch.equal(levels[2:5], torch.full((3,), 0.7))
    assert torch.equal(levels[:2], torch.zeros(2)) and torch.equal(levels[5:], torch.zeros(3))
    assert schedule.window(8) == (2, 5)
    with pytest.raises(ValueError, match="does not fit"):
        schedule.levels(4)
    with pytest.raises(ValueError, match="exceeds"):
        WindowNoise(ConstantNoise(0.7), size=9).levels(8)


def test_window_random_start_in_range_and_reproducible():
    schedule = WindowNoise(DecayingNoise(1.0, 0.1), size=4, start="random")
    starts = set()
    for seed in range(60):
        start, stop = schedule.window(10, torch.Generator().manual_seed(seed))
        assert 0 <= start and stop == start + 4 and stop <= 10
        starts.add(start)
        again = schedule.window(10, torch.Generator().manual_seed(seed))
        assert again == (start, stop)
        levels = schedule.levels(10, window=(start, stop))
        # the inner decaying schedule spans the window's own 4 steps
        assert torch.equal(levels[start:stop], DecayingNoise(1.0, 0.1).levels(4))
        assert torch.equal(levels[:start], torch.zeros(start))
        assert torch.equal(levels[stop:], torch.zeros(10 - stop))
        same_draw = schedule.levels(10, torch.Generator().manual_seed(seed))
        assert torch.equal(levels, same_draw)
    assert starts == set(range(7))  # every valid start is reachable


def test_mean_level():
    assert ConstantNoise(0.7).mean_level(10) == pytest.approx(0.7)
    assert DecayingNoise(1.0, 0.0).mean_level(10) == pytest.approx(0.5)
    window = WindowNoise(ConstantNoise(0.8), size=2, start="random")
    assert window.mean_level(8) == pytest.approx(0.2)


def test_from_config_round_trip_and_errors():
    configs = [
        {"kind": "constant", "level": 0.7},
        {"kind": "decaying", "eta_max": 1.0, "eta_min": 0.1},
        {"kind": "window", "size": 4, "start": "random", "inner": {"kind": "decaying"}},
    ]
    for config in configs:
        schedule = from_config(config)
        assert from_config(schedule.to_config()) == schedule
    assert from_config("decaying") == DecayingNoise(1.0, 0.0)
    nested = from_config(configs[2])
    assert isinstance(nested.inner, DecayingNoise) and nested.size == 4
    with pytest.raises(ValueError, match=r"'levl'.*valid keys: level"):
        from_config({"kind": "constant", "levl": 0.7})
    with pytest.raises(ValueError, match="valid kinds: constant, decaying, window"):
        from_config({"kind": "cosine"})
    with pytest.raises(ValueError, match="missing key 'level'"):
        from_config("constant")
    with pytest.raises(ValueError, match="'kind'"):
        from_config({"level": 0.7})
    with pytest.raises(ValueError, match="window start"):
        from_config({"kind": "window", "size": 2, "start": "late", "inner": "decaying"})


@pytest.mark.parametrize("num_steps", [1, 10, 11])
@pytest.mark.parametrize("target", [0.2, 0.35, 0.7])
def test_equal_mean(num_steps, target):
    kinds = [
        ("constant", {}),
        ("decaying", {}),
        ("window", {"size": 1}),
        ("window", {"size": min(3, num_steps), "inner": "decaying"}),
    ]
    for kind, kwargs in kinds:
        schedule = equal_mean(kind, target, num_steps, **kwargs)
        assert schedule.kind == kind
        levels = schedule.levels(num_steps, torch.Generator().manual_seed(0))
        assert abs(levels.double().mean().item() - target) < 1e-6
        assert abs(schedule.mean_level(num_steps) - target) < 1e-6
    decaying = equal_mean("decaying", target, 10)
    assert decaying.eta_min == 0 and decaying.eta_max == pytest.approx(2 * target)
    with pytest.raises(ValueError, match="size="):
        equal_mean("window", 0.3, 10)
