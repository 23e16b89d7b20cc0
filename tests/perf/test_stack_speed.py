"""`search.bench --stack`: the same search at each stack size, alternated, its medians and table.

The arithmetic is checked on made-up runs (a real search per run would be slow); one small real
run checks that a run reports what the figures are made of. No speed is asserted."""

import pytest

from search.perf import stack_speed
from search.perf.stack_speed import format_stack_bench, run_stack_bench

# made-up runs per stack, by round: wall seconds, trials span, training seconds, finished, best
RUNS = {
    1: [(100.0, 90.0, 60.0, 10, 0.90), (300.0, 270.0, 180.0, 10, 0.94), (200.0, 180.0, 120.0, 10, 0.92)],
    4: [(50.0, 40.0, 20.0, 10, 0.93), (40.0, 30.0, 15.0, 9, 0.91), (60.0, 50.0, 30.0, 10, 0.95)],
}


@pytest.fixture
def fake_runs(monkeypatch):
    """run_study replaced by RUNS, in order per stack; the calls it got."""
    calls, taken = [], {k: 0 for k in RUNS}

    def run_study(tmp, *, study, trials, epochs, device, jobs, stack, images, progress, timeout_s):
        calls.append({"study": study, "trials": trials, "epochs": epochs, "device": device, "jobs": jobs,
                      "stack": stack, "images": images})  # fmt: skip
        wall, span, training, finished, best = RUNS[stack][taken[stack]]
        taken[stack] += 1
        return {"wall_s": wall, "trials_span_s": span, "training_s": training, "finished": finished,
                "best": best, "returncode": 0}  # fmt: skip

    monkeypatch.setattr(stack_speed, "run_study", run_study)
    return calls


def test_each_round_runs_the_same_search_at_every_stack_size(fake_runs):
    lines = []
    r = run_stack_bench(
        study="digits", trials=10, epochs=2, device="cpu", stacks=(1, 4), rounds=3, progress=lines.append
    )
    assert sorted(c["stack"] for c in fake_runs) == [1, 1, 1, 4, 4, 4]
    # the same search each time: the trial count, epochs, device and one worker
    assert all(
        (c["study"], c["trials"], c["epochs"], c["device"], c["jobs"]) == ("digits", 10, 2, "cpu", 1)
        for c in fake_runs
    )
    assert len(lines) == 6 and any(line.startswith("round 1/3 stack 1: 100.0 s, 10 trials") for line in lines)
    assert r["stacks"] == [1, 4] and [len(r["runs"][k]) for k in ("1", "4")] == [3, 3]


@pytest.mark.parametrize("rounds", [2, 4])
def test_a_machine_that_slows_steadily_does_not_bias_the_speedup(monkeypatch, rounds):
    """Each run is 10% slower than the one before it (a neighbour ramping up). Stack 4 is truly
    3x faster; the alternation must report 3x, where running the sizes in a fixed order would
    charge the drift to whichever size comes second."""
    true_wall = {1: 300.0, 4: 100.0}
    calls = []

    def run_study(tmp, *, stack, **kw):
        wall = true_wall[stack] * (1 + 0.1 * len(calls))
        calls.append(stack)
        return {"wall_s": wall, "trials_span_s": wall, "training_s": wall, "finished": 10, "best": 0.9,
                "returncode": 0}  # fmt: skip

    monkeypatch.setattr(stack_speed, "run_study", run_study)
    r = run_stack_bench(study="digits", trials=10, epochs=2, device="cpu", stacks=(1, 4), rounds=rounds)
    assert r["4"]["speedup"] == pytest.approx(3.0)


def test_the_figures_are_medians_over_rounds_and_speedups_are_against_the_first_stack(fake_runs):
    r = run_stack_bench(study="digits", trials=10, epochs=2, device="cpu", stacks=(1, 4), rounds=3)
    one, four = r["1"], r["4"]
    assert (one["wall_s_median"], one["span_s_median"], one["training_s_median"]) == (200.0, 180.0, 120.0)
    assert (four["wall_s_median"], four["span_s_median"], four["training_s_median"]) == (50.0, 40.0, 20.0)
    assert one["trials_per_hour"] == pytest.approx(180.0)  # 10 trials in 200 s
    assert four["trials_per_hour"] == pytest.approx(720.0)  # 10 trials in 50 s
    assert four["speedup"] == pytest.approx(4.0)
    assert four["span_s_speedup"] == pytest.approx(4.5)
    assert four["training_s_speedup"] == pytest.approx(6.0)
    assert one["speedup"] == one["span_s_speedup"] == one["training_s_speedup"] == 1.0
    assert (one["best_median"], four["best_median"]) == (0.92, 0.93)
    assert (one["failed"], four["failed"]) == (0, 1)  # one run of stack 4 finished 9 of its 10


def test_the_table_has_a_row_per_stack_and_names_unfinished_trials(fake_runs):
    r = run_stack_bench(study="digits", trials=10, epochs=2, device="cpu", stacks=(1, 4), rounds=3)
    title, header, *rows = format_stack_bench(r).splitlines()
    assert "10 trials x 2 epochs on cpu" in title and "medians of 3 alternated runs" in title
    assert header.split()[:5] == ["stack", "wall", "s", "trials/hour", "speedup"]
    assert len(rows) == 2
    assert rows[0].split()[:5] == ["1", "200.0", "180", "1.00x", "0.9200"]
    assert rows[1].split()[:5] == ["4", "50.0", "720", "4.00x", "0.9300"]
    assert "(4.50x)" in rows[1] and "(6.00x)" in rows[1]
    assert rows[1].endswith("1 trial(s) not finished") and "not finished" not in rows[0]


def test_a_failed_run_stops_the_bench_naming_its_stack(monkeypatch):
    monkeypatch.setattr(stack_speed, "run_study", lambda tmp, **kw: {"error": "exit code 1"})
    with pytest.raises(RuntimeError, match="the stack 1 run failed: exit code 1"):
        run_stack_bench(study="digits", trials=2, epochs=1, device="cpu", stacks=(1, 2), rounds=1)


def test_a_real_run_reports_its_trials_and_the_parts_of_its_time():
    r = run_stack_bench(study="digits", trials=2, epochs=1, device="cpu", stacks=(2,), rounds=1)
    (run,) = r["runs"]["2"]
    assert run["returncode"] == 0 and run["finished"] == 2 and "--stack 2" in run["command"]
    assert r["2"]["failed"] == 0 and 0 < r["2"]["best_median"] <= 1
    # one worker: its trials train within their span, which lies within the command
    assert 0 < run["training_s"] < run["trials_span_s"] < run["wall_s"]
