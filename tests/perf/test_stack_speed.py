"""`search.bench --stack`: the same search at each stack size, and its table."""

from search.perf.stack_speed import format_stack_bench, run_stack_bench


def test_the_stack_bench_runs_each_size_to_the_same_trial_count(tmp_path):
    lines = []
    r = run_stack_bench(
        study="digits", trials=4, epochs=2, device="cpu", stacks=(1, 4), rounds=1, progress=lines.append
    )
    assert len(lines) == 2 and r["stacks"] == [1, 4]
    for k in ("1", "4"):
        (run,) = r["runs"][k]
        assert run["finished"] == 4 and run["returncode"] == 0 and "--stack" in run["command"]
        assert r[k]["failed"] == 0 and 0 < r[k]["best_median"] <= 1
        assert r[k]["trials_per_hour"] == 4 / r[k]["wall_s_median"] * 3600
        # one worker: its trials train within their span, which lies within the command
        assert 0 < r[k]["training_s_median"] < r[k]["span_s_median"] < r[k]["wall_s_median"]
    assert r["1"]["speedup"] == r["1"]["span_s_speedup"] == r["1"]["training_s_speedup"] == 1.0
    table = format_stack_bench(r)
    assert "stack" in table and table.count("\n") == 3
