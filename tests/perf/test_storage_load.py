"""Many workers on one PostgreSQL, directly and through one `search.serve` proxy: every trial is
counted once, none lost or doubled, none failed. Prints trials per second and peak connections;
asserts no speed (the machine is shared)."""

import signal
import subprocess
import sys
import uuid

import optuna
import pytest
from helpers import postgres_or_skip
from optuna.trial import TrialState

pytest.importorskip("grpc", reason="the proxied load needs the grpc extra: pip install -e '.[grpc]'")

from search.perf.storage_load import run_load, start_serve  # noqa: E402


@pytest.fixture(scope="module")
def postgres() -> str:
    return postgres_or_skip()


def test_the_bench_refuses_a_storage_load_without_a_postgresql_url(tmp_path, capsys):
    from search.bench import main

    assert main(["--storage-load"]) == 2
    assert "--storage-load needs --storage postgresql://" in capsys.readouterr().err
    assert main(["--storage-load", "--storage", f"sqlite:///{tmp_path}/s.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "counts PostgreSQL connections" in err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "proxy"])
def test_sixteen_workers_run_320_storage_only_trials_each_counted_once(postgres, proxied):
    r = run_load(postgres, proxied=proxied, workers=16, trials=320)
    print(
        f"\n{r['path']}: 16 workers, 320 trials in {r['seconds']:.1f} s: {r['trials_per_s']:.1f} trials/s, "
        f"peak {r['peak_connections']} PostgreSQL connections, {r['transactions_per_trial']:.1f} "
        "transactions a trial"
    )
    assert r["worker_exit_codes"] == [0] * 16
    assert r["states"] == {"COMPLETE": 320}
    assert r["numbers"] == list(range(320))  # none lost, none twice
    assert r["complete_with_all_steps"] == 320  # each with its 10 intermediate values


@pytest.mark.slow
def test_four_search_runs_on_digits_through_one_proxy_count_every_trial_once(postgres, tmp_path):
    name = f"proxy-{uuid.uuid4().hex[:8]}"
    server, url = start_serve(postgres)
    cmd = [sys.executable, "-m", "search.run", "--study", "digits", "--epochs", "1", "--device", "cpu",
           "--no-progress", "--storage", url, "--study-name", name, "--trials", "4",
           "--results-dir", str(tmp_path / "results")]  # fmt: skip
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    try:
        for p, (out, err) in zip(runs, [p.communicate(timeout=300) for p in runs], strict=True):
            assert p.returncode == 0, err
            assert "this run finished 4 trial(s), 0 failed" in out
        trials = optuna.load_study(study_name=name, storage=postgres).trials
        assert sorted(t.number for t in trials) == list(range(16))
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert len({t.user_attrs["worker"] for t in trials}) == 4
    finally:
        for p in runs:
            p.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        try:
            optuna.delete_study(study_name=name, storage=postgres)
        except KeyError:
            pass
