"""Smaller files of the exported model, and what each costs: `export --quantize int8` and `--half`.

`model-int8.pt` is PyTorch's dynamic int8 quantization of every `nn.Linear`
(`torch.ao.quantization.quantize_dynamic`: weights int8 with one scale per tensor, activations
quantized per batch as it runs; CPU only). `model-half.pt` is model.pt's state_dict in float16.
Both are state_dicts that load with `torch.load(weights_only=True)`: the int8 one into
`quantize_dynamic(build_mlp(config, ...))`, the half one into the float32 `build_mlp(config, ...)`
itself, which upcasts it. They are always the best single trial's model, also where the export's
model is the ensemble (its members would need their own loading path): best.json says so.

Each file is read back and that copy is scored once on the test split with the project's
evaluation code, on the CPU (where int8 runs), next to the float model: test figure, file size,
parameter count, and the latency of one forward pass of a fixed batch (256 test images or 1,000
test rows, cycled) on the CPU, the median of RUNS after WARMUP. The half model is computed in
float32, its weights upcast at load: float16 matmuls on a CPU without float16 instructions run a
slow path (20x float32's time on an AMD EPYC), measured and recorded beside it.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.artifacts.evaluation import Evaluation, evaluate_split
from search.data.datasets import Dataset
from search.errors import UserError, first_line
from search.files import atomic_write
from search.schema import MODEL_HALF_PT, MODEL_INT8_PT, MODEL_PT
from search.training.config import TrainConfig
from search.training.model import build_for, count_params
from search.tuning import pool

QUANTIZE = ("int8",)  # --quantize's choices
IMAGE_ROWS, TABLE_ROWS = 256, 1000  # the latency batch
WARMUP, RUNS = 3, 15
HALF_RUNS = 5  # float16 matmuls on the CPU are slow: fewer runs to say by how much


@dataclass
class Smaller:
    record: dict[str, Any] | None = None  # best.json's "smaller"
    lines: list[str] = field(default_factory=list)  # for people
    files: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.ao.quantization's deprecation notices (it moves to torchao), quantized tensors' and
    loading's TypedStorage ones: said on every call, nothing a user of the export can act on."""
    with warnings.catch_warnings():
        for text in ("torch.ao.quantization is deprecated", "torch.quantize_per_tensor", "TypedStorage"):
            warnings.filterwarnings("ignore", message=f".*{text}")
        yield


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` on the CPU in float32 with every nn.Linear dynamically quantized to int8."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise UserError(
            f"--quantize int8 needs torch.ao.quantization, gone from torch {torch.__version__}"
        ) from None
    cpu = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with _quiet_torch():
        return quantize_dynamic(cpu, {nn.Linear}, dtype=torch.qint8).eval()


def load_int8(path: Path, model: nn.Module) -> nn.Module:
    """model-int8.pt into `model` (a freshly built float model of the same config), quantized."""
    quantized = quantize_int8(model)
    with _quiet_torch():
        quantized.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return quantized


def load_half(path: Path, model: nn.Module) -> nn.Module:
    """model-half.pt into a float32 `model` of the same config: the weights upcast at load."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to("cpu").eval()


def stored_params(model: nn.Module) -> int:
    """Parameters, a quantized Linear's packed weight and bias included (they are not nn.Parameters)."""
    packed = 0
    for m in model.modules():
        params = getattr(m, "_packed_params", None)  # a quantized Linear's LinearPackedParams
        if isinstance(params, nn.Module):
            weight, bias = params._weight_bias()  # type: ignore[operator]
            packed += weight.numel() + (bias.numel() if bias is not None else 0)
    return count_params(model) + packed


def latency_ms(model: nn.Module, batch: torch.Tensor, *, warmup: int = WARMUP, runs: int = RUNS) -> float:
    """The median wall time of one forward pass of `batch`, in milliseconds."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def write(
    out: Path, model: nn.Module, config: TrainConfig, data: Dataset, float_eval: Evaluation, *,
    int8: bool, half: bool, trial: int, ensemble: bool,
) -> Smaller:  # fmt: skip
    """Write the asked-for smaller files of `model` (the trial's float model, saved as model.pt in
    `out`) beside it, scored against `float_eval` (its test evaluation on `data`'s device)."""
    for name, wanted in ((MODEL_INT8_PT, int8), (MODEL_HALF_PT, half)):
        if not wanted:  # an earlier export's: never left beside other weights
            (out / name).unlink(missing_ok=True)
    if not (int8 or half):
        return Smaller()
    split = data.variant(config.numeric)
    x, y = split.x_test.to("cpu", torch.float32), split.y_test.cpu()

    def evaluate(m: nn.Module) -> Evaluation:
        how = dict(task=split.task, metric=split.metric, target=split.target)
        return evaluate_split(m, x, y, split.classes, **how)  # type: ignore[arg-type]

    def rebuilt() -> nn.Module:
        return build_for(config, split).eval()

    float_cpu = copy.deepcopy(model).to("cpu", torch.float32).eval()
    same = split.device.type == "cpu" and split.x_test.dtype == torch.float32
    reference = float_eval if same else evaluate(float_cpu)  # like for like: on the CPU, float32
    n_rows = IMAGE_ROWS if split.image_shape is not None else TABLE_ROWS
    batch = x[torch.arange(n_rows) % len(x)] if len(x) else None

    def entry(name: str, m: nn.Module, ev: Evaluation) -> dict[str, Any]:
        agree = None  # the share of test rows whose class is the float model's
        if split.task == "classification" and ev.n and ev is not reference:
            agree = float(np.mean(ev.predictions == reference.predictions))
        return {
            "file": name,
            "test_score": ev.score,
            "bytes": (out / name).stat().st_size,
            "n_params": stored_params(m),
            "latency_ms": latency_ms(m, batch) if batch is not None else None,
            "agrees_with_float": agree,
        }

    models = {"float": entry(MODEL_PT, float_cpu, reference)}
    files = []
    if int8:
        try:
            quantized = quantize_int8(float_cpu)
            atomic_write(out / MODEL_INT8_PT, lambda fh: torch.save(quantized.state_dict(), fh))
            loaded = load_int8(out / MODEL_INT8_PT, rebuilt())
            models["int8"] = entry(MODEL_INT8_PT, loaded, evaluate(loaded))
        except RuntimeError as e:  # no quantized engine for this CPU, for one
            raise UserError(
                f"--quantize int8: PyTorch's dynamic quantization failed ({first_line(e)})"
            ) from None
        models["int8"]["compute"] = "int8 weights, activations quantized per batch (CPU)"
        files.append(MODEL_INT8_PT)
    if half:
        atomic_write(out / MODEL_HALF_PT, lambda fh: torch.save(pool.half_state(float_cpu), fh))
        loaded = load_half(out / MODEL_HALF_PT, rebuilt())
        models["half"] = entry(MODEL_HALF_PT, loaded, evaluate(loaded))
        models["half"]["compute"] = "float32: the float16 weights upcast at load"
        models["half"]["float16_compute_latency_ms"] = _float16_latency(loaded, batch)
        files.append(MODEL_HALF_PT)
    note = " (not the exported ensemble)" if ensemble else ""
    record = {
        "trial_number": trial,
        "of": f"the best single trial's model{note}",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "latency_rows": n_rows,
        "latency_runs": RUNS,
        "latency_warmup": WARMUP,
        "models": models,
    }
    return Smaller(record, _lines(record, split, note), files)


def _float16_latency(model: nn.Module, batch: torch.Tensor | None) -> float | None:
    """The same forward pass computed in float16 on the CPU; None where PyTorch cannot."""
    if batch is None:
        return None
    try:
        return latency_ms(copy.deepcopy(model).half(), batch.half(), warmup=1, runs=HALF_RUNS)
    except (RuntimeError, NotImplementedError):  # no float16 kernel for some layer here
        return None


NAMES = {"float": "float32", "int8": "int8", "half": "float16"}


def _lines(record: dict[str, Any], data: Dataset, note: str) -> list[str]:
    what = "test images" if data.image_shape is not None else "test rows"
    threads = record["threads"]
    lines = [
        f"smaller files of trial {record['trial_number']}'s model{note}, "
        f"scored on the CPU; latency: a batch of {record['latency_rows']:,} {what}, median of "
        f"{record['latency_runs']} runs, {threads} thread{'s' if threads != 1 else ''}:"
    ]
    models = record["models"]
    base = models["float"]["bytes"]
    width = max(len(m["file"]) for m in models.values())
    for kind, m in models.items():
        share = "" if kind == "float" else f" ({m['bytes'] / base:.1%})"
        size = f"{m['bytes']:,} bytes{share}"
        latency = "-" if m["latency_ms"] is None else f"{m['latency_ms']:.3g} ms"
        line = (
            f"  {NAMES[kind]:<7}  {m['file']:<{width}}  test {data.metric} {m['test_score']:.4f}  "
            f"{size:<22}  {m['n_params']:,} params  {latency}"
        )
        if kind != "float" and m["agrees_with_float"] is not None:
            line += f"; {m['agrees_with_float']:.1%} of test predictions as float32's"
        if kind == "half":
            fp16 = m["float16_compute_latency_ms"]
            slow = f"; in float16 here: {fp16:.3g} ms" if fp16 is not None else ""
            line += f" (computed in float32, upcast at load{slow})"
        lines.append(line)
    return lines
