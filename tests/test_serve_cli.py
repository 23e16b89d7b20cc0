"""`python -m search.serve`: Optuna's gRPC proxy in front of PostgreSQL; searches, exports and
Ctrl-C/SIGTERM through it. Refusals need no database."""

import signal
import socket
import uuid

import optuna
import pytest
from helpers import one_torch_thread, postgres_or_skip, run_args
from optuna.trial import TrialState

pytest.importorskip("grpc", reason="search.serve needs the grpc extra: pip install -e '.[grpc]'")

from search.perf.storage_load import start_serve  # noqa: E402
from search.serve import main  # noqa: E402


def test_sqlite_behind_the_proxy_is_refused_with_the_reason(tmp_path, capsys):
    assert main(["--storage", f"sqlite:///{tmp_path}/s.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SQLite is one file on one machine" in err
    assert "--jobs N" in err and not (tmp_path / "s.db").exists()


def test_a_proxy_behind_the_proxy_and_a_bad_port_are_refused(capsys):
    assert main(["--storage", "grpc://127.0.0.1:1"]) == 2
    assert "a proxy serves a database (postgresql://...), not another proxy" in capsys.readouterr().err
    assert main(["--storage", "postgresql://u@h/db", "--port", "70000"]) == 2
    assert "70000 is not a port" in capsys.readouterr().err


def test_a_port_someone_holds_is_refused(capsys):
    from search.errors import UserError
    from search.storage.serve import check_port_free

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1:"):
            check_port_free("127.0.0.1", held.getsockname()[1])


def test_searches_and_exports_run_through_the_proxy_and_sigterm_stops_it_with_143(tmp_path, capsys):
    db = postgres_or_skip()
    from search.export import main as export_main
    from search.run import main as run_main

    name = f"serve-{uuid.uuid4().hex[:8]}"
    proc, url = start_serve(db)
    try:
        with one_torch_thread("search.tuning.runner"):
            args = run_args(tmp_path, "--trials", "3", "--study-name", name)
            args[args.index("--storage") + 1] = url
            assert run_main(args) == 0
            out = capsys.readouterr().out
            assert "this run finished 3 trial(s), 0 failed" in out and "GrpcStorageProxy(host=" in out
            export = ["--study-name", name, "--storage", url, "--device", "cpu", "--no-progress",
                      "--results-dir", str(tmp_path / "results")]  # fmt: skip
            assert export_main(export) == 0
        best = (tmp_path / "results" / name / "best.json").read_text()
        assert name in best and "grpc://" in best
        trials = optuna.load_study(study_name=name, storage=db).trials
        assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials] == [True] * 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
        proc.wait()
        try:
            optuna.delete_study(study_name=name, storage=db)
        except KeyError:
            pass


def test_ctrl_c_stops_the_proxy_with_130():
    proc, _ = start_serve(postgres_or_skip())
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()
