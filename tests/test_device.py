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


@pytest.mark.parametrize(
    "choice, cpu_bf16, expected",
    [
        ("auto", True, {"cpu": True, "cuda": True, "mps": False}),
        ("auto", False, {"cpu": False, "cuda": True, "mps": False}),
        ("fp32", True, {"cpu": False, "cuda": False, "mps": False}),
        ("bf16", False, {"cpu": True, "cuda": True, "mps": False}),
    ],
)
def test_bf16_where_the_hardware_multiplies_in_it_unless_told(monkeypatch, choice, cpu_bf16, expected):
    monkeypatch.setenv(dev.PRECISION_ENV, choice)
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: cpu_bf16)
    got = {kind: dev.reduced_precision(torch.device(kind)) for kind in expected}
    assert got == expected
    assert dev.compute_dtype(torch.device("cpu")) == (torch.bfloat16 if expected["cpu"] else torch.float32)


def test_autocast_on_a_bf16_cpu_multiplies_in_bf16(monkeypatch):
    monkeypatch.setenv(dev.PRECISION_ENV, "bf16")
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with dev.autocast(torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    monkeypatch.setenv(dev.PRECISION_ENV, "fp32")
    with dev.autocast(torch.device("cpu")):
        assert (a @ b).dtype == torch.float32


def test_an_unknown_precision_is_refused_in_one_line_before_any_training(monkeypatch):
    monkeypatch.setenv(dev.PRECISION_ENV, "fp16")
    with pytest.raises(UserError, match="SEARCH_PRECISION='fp16': expected one of auto, fp32, bf16"):
        dev.resolve_device("cpu")


def test_torch_still_has_the_cpu_bf16_probes():
    """search.device.cpu_has_bf16 reads torch.cpu's private probes; without them every CPU
    trains in float32 (slower on AVX512-BF16 and AMX machines, never wrong)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        assert callable(getattr(torch.cpu, name, None)), f"torch {torch.__version__} dropped torch.cpu.{name}"


def test_a_forced_precision_wins_over_the_environment_inside_its_block_only(monkeypatch):
    monkeypatch.setenv(dev.PRECISION_ENV, "fp32")
    cpu = torch.device("cpu")
    with dev.forced_precision("bf16"):
        assert dev.reduced_precision(cpu)
        with dev.forced_precision("fp32"):
            assert not dev.reduced_precision(cpu)
        assert dev.reduced_precision(cpu)
    assert not dev.reduced_precision(cpu)
    with pytest.raises(UserError, match="expected one of"), dev.forced_precision("half"):
        pass
