"""Everything that depends on which device trains: picked here and nowhere else.

Not a command: a foundation, like search.errors and search.schema, that the data (where tensors
live), training (precision, optimizer kernels, free memory), the workers and the provenance share.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Iterator

import torch

from search.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is an error,
    and so is a SEARCH_PRECISION that names no precision (before any training starts)."""
    precision_choice()
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in DEVICE_CHOICES or (index and not index.isdigit()):
        raise UserError(f"--device {name!r}: expected one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu or auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not _mps_available():
        raise UserError(f"--device {name}: Apple MPS is not available here; use cpu or auto")
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def worker_device(device: torch.device, worker: int) -> torch.device:
    """With several CUDA devices, worker i trains on device i mod n; otherwise on `device`."""
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return torch.device("cuda", worker % torch.cuda.device_count())
    return device


def split_cpu_threads(jobs: int) -> int:
    """Give each of `jobs` worker processes its share of the cores instead of oversubscribing."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // max(1, jobs))
    torch.set_num_threads(threads)
    return threads


PRECISION_ENV = "SEARCH_PRECISION"  # auto (the default), fp32 or bf16: what `autocast` computes in
PRECISIONS = ("auto", "fp32", "bf16")


def reduced_precision(device: torch.device) -> bool:
    """Whether `autocast` computes in bfloat16 here (8 bits of mantissa): two kernels that add in
    another order then disagree on a few more rows than float32 ones do.

    `auto` picks bf16 on CUDA and on CPUs with bf16 matrix instructions (AVX512-BF16, AMX), where
    a matmul runs 2.4x and a CIFAR-10 epoch 1.25x faster at the same accuracy
    (docs/benchmarks.md, "bf16 on the CPU"); float32 elsewhere (MPS, older CPUs, where bf16 is
    emulated and slower). SEARCH_PRECISION=fp32 forces float32 everywhere, bf16 forces bf16.
    """
    choice = precision_choice()
    if choice != "auto" or device.type not in ("cuda", "cpu"):
        return choice == "bf16" and device.type in ("cuda", "cpu")
    return device.type == "cuda" or cpu_has_bf16()


_forced: list[str] = []  # forced_precision's choice, innermost last


@contextlib.contextmanager
def forced_precision(choice: str) -> Iterator[None]:
    """Within the block, `choice` (one of PRECISIONS) whatever SEARCH_PRECISION says: for a bench
    that times both precisions in one process."""
    if choice not in PRECISIONS:
        raise UserError(f"precision {choice!r}: expected one of {', '.join(PRECISIONS)}")
    _forced.append(choice)
    try:
        yield
    finally:
        _forced.pop()


def precision_choice() -> str:
    """SEARCH_PRECISION as given (auto when unset); a value outside PRECISIONS is a UserError."""
    if _forced:
        return _forced[-1]
    choice = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if choice not in PRECISIONS:
        raise UserError(f"{PRECISION_ENV}={choice!r}: expected one of {', '.join(PRECISIONS)}")
    return choice


@functools.cache
def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU. torch.cpu's probes are private (underscored): without
    them, float32 (tests/test_device.py names the torch version if they go)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where `reduced_precision` says so (fp32 master weights); else full precision.

    Without autocast's weight-cast cache: an MLP casts each weight once per forward pass, so the
    cache saves nothing.
    """
    if reduced_precision(device):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def compute_dtype(device: torch.device) -> torch.dtype:
    """What `autocast`'s matmuls compute in on `device`."""
    return torch.bfloat16 if reduced_precision(device) else torch.float32


# PyTorch's single-kernel ("fused") optimizers, by device type. On the CPU (torch >= 2.4) fused
# SGD makes one pass over the weights instead of foreach's three: its step takes ~40% less time.
_FUSED = {"cuda": ("sgd", "adam", "adamw"), "cpu": ("sgd", "adam", "adamw")}


def optimizer_flags(device: torch.device, optimizer: str) -> dict[str, bool]:
    """Fused kernels where PyTorch has them for this device, multi-tensor (foreach) otherwise."""
    if optimizer in _FUSED.get(device.type, ()) and (device.type != "cpu" or _fused_on_cpu()):
        return {"fused": True}
    return {"foreach": True}


def _fused_on_cpu() -> bool:
    return torch.torch_version.TorchVersion(torch.__version__) >= "2.4"


def free_memory(device: torch.device) -> None:
    """Drop what a finished or failed trial left behind, so memory does not grow across trials."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation may use on `device`: CUDA's free memory, or the host's available
    memory (Linux's MemAvailable; without /proc, a quarter of the physical memory)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
