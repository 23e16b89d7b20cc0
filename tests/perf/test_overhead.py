"""`search.bench --overhead`: every variant runs the same search in its own process; the public
variant runs with Optuna's internals off. No speed is asserted."""

from search.perf.overhead import VARIANTS, format_overhead, run_overhead


def test_every_variant_runs_and_the_public_one_without_optunas_internals():
    r = run_overhead(trials=3, rounds=1)
    for v in VARIANTS:
        (run,) = r["runs"][v]
        assert sum(run["states"].values()) >= 3 and run["wall_s"] > 0, v
        assert run["internals"] is (v != "public"), v
    table = format_overhead(r)
    assert all(v in table for v in VARIANTS) and "1.00x" in table
