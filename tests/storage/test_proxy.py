"""grpc://HOST:PORT: Optuna's gRPC proxy as a storage, its client beating for each running trial."""

import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from search.errors import UserError
from search.storage import proxy
from search.storage.connect import check_storage, dashboard_command, open_readonly, open_storage

pytest.importorskip("grpc", reason="grpc:// needs the grpc extra: pip install -e '.[grpc]'")

from helpers import needs_internals  # noqa: E402

from search.optuna_versions import internals_allowed  # noqa: E402
from search.perf.storage_load import free_port  # noqa: E402
from search.schema import ATTR_BEAT  # noqa: E402
from search.storage._beats import OPTUNA_INTERNAL, BeatingProxy, ProxyBeats  # noqa: E402
from search.storage.serve import start_proxy  # noqa: E402
from search.storage.silent import SilentTrials  # noqa: E402


@pytest.fixture(scope="module")
def served():
    """(grpc URL, the storage behind it): one in-memory proxy for the module, on a daemon thread."""
    storage, port = optuna.storages.InMemoryStorage(), free_port()
    start_proxy(storage, "127.0.0.1", port)
    return f"grpc://127.0.0.1:{port}", storage


@pytest.mark.parametrize(
    "url", ["grpc://127.0.0.1", "grpc://:13000", "grpc://h:13000/db", "grpc://u@h:13000", "grpc://h:port"]
)
def test_a_grpc_url_names_a_host_and_a_port_and_nothing_else(url):
    with pytest.raises(UserError, match="is not a gRPC proxy URL; e.g. grpc://127.0.0.1:13000"):
        check_storage(url)


def test_without_grpcio_a_grpc_url_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)  # what `import grpc` finds where it is missing
    with pytest.raises(UserError, match=r"grpc:// storage needs gRPC .* pip install -e '\.\[grpc\]'"):
        check_storage("grpc://127.0.0.1:13000")


def test_an_unreachable_proxy_is_one_line_that_says_how_to_start_it(monkeypatch, capsys):
    from search.compare import main

    monkeypatch.setattr(proxy, "REACH_TIMEOUT_S", 0.3)
    port = free_port()
    assert main(["--storage", f"GRPC://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"cannot reach the gRPC storage proxy at grpc://127.0.0.1:{port}" in err
    assert "start it with python -m search.serve --storage postgresql://" in err and f"--port {port}" in err


def test_workers_get_a_beating_client_and_readers_a_plain_one(served):
    url, _ = served
    assert check_storage(url) == url
    worker, reader = open_storage(url, heartbeat_s=7), open_readonly(url)
    assert isinstance(worker, ProxyBeats) and worker.get_heartbeat_interval() == 7
    assert isinstance(worker, BeatingProxy) == internals_allowed()  # Optuna's own thread beats it
    assert type(reader) is optuna.storages.GrpcStorageProxy
    assert type(open_storage(url, heartbeat_s=None)) is optuna.storages.GrpcStorageProxy
    assert "GrpcStorageProxy(host='127.0.0.1', port=" in dashboard_command(url)


@needs_internals
def test_a_trial_through_the_proxy_beats_every_interval_while_it_runs(served):
    url, behind = served
    name = f"beats-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat_s=1))
    seen = []

    def objective(trial):
        for _ in range(25):
            beat = behind.get_trial(trial._trial_id).system_attrs.get(ATTR_BEAT)
            if beat and beat not in seen:
                seen.append(beat)
            time.sleep(0.1)
        return 0.0

    study.optimize(objective, n_trials=1)
    assert len(seen) >= 2, (
        f"Optuna {optuna.__version__} no longer beats through {OPTUNA_INTERNAL}: "
        "search/storage/_beats.py must follow it"
    )
    assert all(b["every"] == 1 for b in seen) and study.trials[0].state == TrialState.COMPLETE


# A worker as search runs one (search.tuning.stacking): its trial beats through running.heartbeats,
# Optuna's heartbeat thread where the internals are on, its own thread where they are off.
_WORKER = """
import sys, time, optuna
from search.storage import running
from search.storage.connect import open_storage
storage = open_storage(sys.argv[1], heartbeat_s=1)
study = running.bind(optuna.load_study(study_name=sys.argv[2], storage=storage), storage)
def objective(trial):
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("worker", "far:1:0")
    with running.heartbeats(study, [trial]):
        print("started", flush=True)
        time.sleep(600)
study.optimize(objective, n_trials=1)
"""


def test_a_killed_workers_trial_through_the_proxy_is_failed_and_retried(served):
    url, behind = served
    name = f"killed-{uuid.uuid4().hex[:6]}"
    optuna.create_study(study_name=name, storage=behind, direction="maximize")
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, url, name], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "started"
        time.sleep(1.5)  # a beat or two
    finally:
        worker.kill()
        worker.wait()
    silent, found, deadline = SilentTrials(), [], time.monotonic() + 20
    while not found and time.monotonic() < deadline:
        found = silent.check(behind)
        time.sleep(0.2)
    assert [(s.study, s.number, s.worker) for s in found] == [(name, 0, "far:1:0")]
    failed, retry = optuna.load_study(study_name=name, storage=behind).trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"].startswith("no heartbeat")
    assert retry.state == TrialState.WAITING and retry.params == failed.params
