"""vrl.timing: the benchmarks' timing arithmetic, checked with fake clocks of known durations."""

import pytest
import torch

from vrl.timing import ModelClock, outside_cost, outside_ms_per_step, overhead, time_interleaved


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_model_clock_adds_up_the_time_inside_the_model():
    clock = FakeClock()

    def velocity(x, sigma):
        clock.advance(0.25)
        return x * 2

    model = ModelClock(velocity, clock=clock)
    x = torch.ones(2, 3)
    assert torch.equal(model(x, torch.zeros(2)), x * 2)
    clock.advance(1.0)  # outside the model: not counted
    model(x, torch.zeros(2))
    assert model.seconds == pytest.approx(0.5)


def test_time_interleaved_rotates_the_order_and_records_known_durations():
    wall, cpu = FakeClock(), FakeClock()
    calls = []

    def velocity(x, sigma):
        wall.advance(0.5)
        return x

    model = ModelClock(velocity, clock=wall)

    def loop(name, steps, extra):
        def run():
            calls.append(name)
            for _ in range(steps):
                model(torch.zeros(1), torch.zeros(1))
                wall.advance(extra)
            cpu.advance(0.1)

        return run

    fns = {"a": loop("a", 3, 0.02), "b": loop("b", 3, 0.01), "c": lambda: wall.advance(7.0)}
    times = time_interleaved(fns, model, warmup=1, repeats=3, wall=wall, cpu=cpu)

    assert calls == ["a", "b", "b", "a", "a", "b", "a", "b"]  # rounds: abc, bca, cab, abc
    assert len(times["a"]["seconds"]) == 3  # the warm-up round is dropped
    assert times["a"]["seconds"] == pytest.approx([1.56] * 3)
    assert times["a"]["model_seconds"] == pytest.approx([1.5] * 3)
    assert times["b"]["seconds"] == pytest.approx([1.53] * 3)
    assert times["a"]["cpu_seconds"] == pytest.approx([0.1] * 3)
    assert times["c"]["seconds"] == pytest.approx([7.0] * 3)
    assert times["c"]["model_seconds"] == [0.0] * 3  # the model clock is reset before each call
    assert times["c"]["cpu_seconds"] == [0.0] * 3
    assert times["a"]["peak_mib"] == []  # CUDA only

    assert outside_ms_per_step(times["a"], 3) == pytest.approx(20.0)
    assert outside_ms_per_step(times["b"], 3) == pytest.approx(10.0)
    cost = outside_cost(times["a"], times["b"], 3)
    assert cost["loop_ms_per_step"] == pytest.approx(20.0)
    assert cost["baseline_ms_per_step"] == pytest.approx(10.0)
    assert cost["extra_ms_per_step"] == pytest.approx(10.0)
    assert cost["share"] == pytest.approx(0.03 / 1.53)


def test_outside_cost_can_come_out_negative():
    # under load the baseline can take longer outside the model than the loop: the figure says so
    loop = {"seconds": [1.0, 1.2, 1.1], "model_seconds": [0.9, 1.1, 1.0]}
    baseline = {"seconds": [1.3, 1.0, 1.2], "model_seconds": [1.0, 0.8, 1.0]}
    cost = outside_cost(loop, baseline, 2)
    assert cost["loop_ms_per_step"] == pytest.approx(50.0)  # median of 0.1, 0.1, 0.1 over 2
    assert cost["baseline_ms_per_step"] == pytest.approx(100.0)  # median of 0.3, 0.2, 0.2 over 2
    assert cost["extra_ms_per_step"] == pytest.approx(-50.0)
    assert cost["share"] == pytest.approx(-0.1 / 1.2)


def test_overhead_from_medians_and_from_paired_rounds():
    a, b = [1.1, 2.4, 1.5, 1.2], [1.0, 2.0, 1.5, 1.0]
    o = overhead(a, b)
    assert o["of_medians"] == pytest.approx(1.35 / 1.25 - 1)
    # per round a / b - 1: 0.1, 0.2, 0.0, 0.2
    assert o["paired_median"] == pytest.approx(0.15)
    assert o["paired_q1"] <= o["paired_median"] <= o["paired_q3"]
    assert o["paired_q1"] == pytest.approx(0.025) and o["paired_q3"] == pytest.approx(0.2)
    single = overhead([3.0], [2.0])
    assert single == pytest.approx(
        {"of_medians": 0.5, "paired_median": 0.5, "paired_q1": 0.5, "paired_q3": 0.5}
    )
    with pytest.raises(ValueError):
        overhead([1.0, 2.0], [1.0])
