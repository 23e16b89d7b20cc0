"""The real optuna-dashboard server serves our studies: trials, states, params and user attrs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing

import pytest
from optuna.trial import TrialState

DASHBOARD = shutil.which("optuna-dashboard")
pytestmark = pytest.mark.skipif(DASHBOARD is None, reason="the optuna-dashboard executable is not installed")
START_TIMEOUT_S = 60


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.fixture
def dashboard(digits_study_copy, tmp_path):
    """(base URL, study) of an optuna-dashboard serving a copy of the digits study."""
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [DASHBOARD, digits_study_copy.storage_url, "--port", str(port), "--host", "127.0.0.1"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                get_json(f"{base}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"optuna-dashboard did not answer in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}"
                    )
                time.sleep(0.2)
        yield base, digits_study_copy.load()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_dashboard_serves_the_study_its_trials_and_their_user_attrs(dashboard):
    base, study = dashboard
    [summary] = get_json(f"{base}/api/studies")["study_summaries"]
    assert summary["study_name"] == "digits" and summary["directions"] == ["maximize"]
    assert {"key": "dataset", "value": "digits"} in summary["user_attrs"]

    detail = get_json(f"{base}/api/studies/{summary['study_id']}")
    assert detail["name"] == "digits"
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in study.trials]
    for t in study.trials:
        got = served[t.number]
        assert got["state"] == t.state.name.capitalize()
        attrs = {a["key"]: a["value"] for a in got["user_attrs"]}
        for key in ("architecture", "n_params", "train_seconds", "epochs_run", "seed", "device"):
            assert attrs[key] == str(t.user_attrs[key]), (t.number, key)
        if t.state == TrialState.PRUNED:
            assert attrs["reason"] == t.user_attrs["reason"]
        assert {p["name"] for p in got["params"]} == set(t.params)
        steps = [v["step"] for v in got["intermediate_values"]]
        assert steps == sorted(t.intermediate_values)  # the learning curve, epoch by epoch
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert [b["number"] for b in detail["best_trials"]] == [best.number]
    assert detail["has_intermediate_values"] is True
