"""Device handling lives in one place: picking, per-worker placement, thread shares, kernels."""

import pytest
import torch

from search import device as dev
from search.errors import UserError


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name, words", [("tpu", "expected one of"), ("cuda:x", "expected one of")])
def test_unknown_devices_are_refused_in_one_line(name, words):
    with pytest.raises(UserError, match=words):
        dev.resolve_device(name)


def test_a_missing_cuda_is_refused_not_silently_replaced(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        dev.resolve_device("cuda")


def test_worker_i_trains_on_cuda_device_i_mod_n(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    cuda = torch.device("cuda")
    assert [dev.worker_device(cuda, i).index for i in range(5)] == [0, 1, 2, 0, 1]
    assert dev.worker_device(torch.device("cuda", 2), 4) == torch.device("cuda", 2)  # pinned stays
    assert dev.worker_device(torch.device("cpu"), 4) == torch.device("cpu")


def test_cpu_workers_split_the_cores_instead_of_oversubscribing(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    try:
        assert dev.split_cpu_threads(4) == 2 and torch.get_num_threads() == 2
        assert dev.split_cpu_threads(16) == 1
    finally:
        torch.set_num_threads(before)


def test_fused_optimizers_where_the_device_has_them():
    assert dev.optimizer_flags(torch.device("cuda"), "adamw") == {"fused": True}
    assert dev.optimizer_flags(torch.device("cuda"), "rmsprop") == {"foreach": True}
    assert dev.optimizer_flags(torch.device("cpu"), "sgd") == {"fused": True}
