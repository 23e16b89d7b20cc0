"""export --quantize int8 and --half: the smaller files beside model.pt, each read back with nothing
but PyTorch (and the model builder), scored once on the test split, and what each costs."""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import pytest
import torch
from helpers import WEAK_STUDY, one_torch_thread, run_args
from torch import nn

from search.artifacts import smaller
from search.data.datasets import load_dataset
from search.export import main as export_main
from search.run import main as run_main
from search.training.config import TrainConfig
from search.training.model import build_mlp, count_params

# Two hidden layers of 256: the Linear weights are nearly all of the file, as in a real study's model.
WIDE = """
[study]
dataset = "digits"
epochs = 3
val_fraction = 0.2
sampler = "random"
pruner = "none"
ensemble = 0

[space]
n_layers = 2
width = 256
activation = "relu"
batchnorm = true
optimizer = "adam"
lr = 3e-3
batch_size = 64
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread("search.cli"):
        yield


def _quiet(main, argv) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    (root / "wide.toml").write_text(WIDE)
    args = run_args(root, "--trials", "1")
    args[args.index("--study") + 1] = str(root / "wide.toml")
    args[args.index("--epochs") : args.index("--epochs") + 2] = []
    rc, _, err = _quiet(run_main, args)
    assert rc == 0, err
    common = ["--storage", f"sqlite:///{root / 's.db'}", "--results-dir", str(root / "results"),
              "--device", "cpu", "--no-progress"]  # fmt: skip
    return root, common


@pytest.fixture(scope="module")
def exported(searched):
    root, common = searched
    out = root / "out"
    rc, printed, err = _quiet(export_main, [*common, "--out", str(out), "--quantize", "int8", "--half"])
    assert rc == 0, err
    best = json.loads((out / "best.json").read_text())
    data = load_dataset(
        "digits", device="cpu", val_fraction=best["val_fraction"], split_seed=best["split_seed"]
    )
    return out, printed, best, data


def _float_model(best) -> nn.Module:
    return build_mlp(TrainConfig.from_dict(best["config"]), in_features=64, n_classes=10).eval()


def _readme_int8(out, best) -> nn.Module:
    """docs/design.md's way: quantize the rebuilt float model, then load the file into it."""
    model = _float_model(best)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        int8 = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        int8.load_state_dict(torch.load(out / "model-int8.pt", weights_only=True))
    return int8.eval()


def _readme_half(out, best) -> nn.Module:
    """docs/design.md's way: the float16 state_dict into the float32 model (upcast at load)."""
    model = _float_model(best)
    model.load_state_dict(torch.load(out / "model-half.pt", weights_only=True))
    return model


def _logits(model, x) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _accuracy(model, data) -> float:
    """Counted in NumPy from the model's argmax on the test split."""
    pred = _logits(model, data.x_test).argmax(1).numpy()
    return int((pred == data.y_test.numpy()).sum()) / len(pred)


def test_both_smaller_files_are_written_listed_and_summarized(exported):
    out, printed, best, _ = exported
    for name in ("model.pt", "model-int8.pt", "model-half.pt"):
        assert (out / name).is_file(), name
    assert "model-int8.pt, model-half.pt to" in printed
    record = best["smaller"]
    assert record["trial_number"] == best["trial_number"] and "ensemble" not in record["of"]
    assert (record["device"], record["latency_rows"]) == ("cpu", 256) and record["threads"] >= 1
    assert f"a batch of 256 test images, median of 15 runs, {record['threads']} thread" in printed
    models = record["models"]
    assert list(models) == ["float", "int8", "half"]
    for kind, m in models.items():
        assert m["bytes"] == (out / m["file"]).stat().st_size, kind
        assert m["n_params"] == best["n_params"], kind  # the same weights, in fewer bits
        assert m["latency_ms"] > 0, kind
        line = next(x for x in printed.splitlines() if f" {m['file']} " in x)
        assert f"test accuracy {m['test_score']:.4f}" in line and f"{m['bytes']:,} bytes" in line, line
    assert models["float"]["test_score"] == best["single_test_score"] == best["test_score"]
    assert models["half"]["compute"].startswith("float32")
    fp16 = models["half"]["float16_compute_latency_ms"]
    assert fp16 is None or fp16 > 0


def test_the_int8_file_is_under_35_percent_of_the_float_one(exported):
    out, _, best, _ = exported
    assert (out / "model-int8.pt").stat().st_size < 0.35 * (out / "model.pt").stat().st_size
    assert best["smaller"]["models"]["int8"]["bytes"] < 0.35 * best["smaller"]["models"]["float"]["bytes"]


def test_the_reloaded_int8_model_predicts_exactly_as_the_quantized_one_in_memory(exported):
    out, _, best, data = exported
    model = _float_model(best)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    in_memory = smaller.quantize_int8(model)
    reloaded = _readme_int8(out, best)
    assert torch.equal(_logits(reloaded, data.x_test), _logits(in_memory, data.x_test))
    # and it is int8: the packed weights of each Linear
    linears = [m for m in reloaded.modules() if isinstance(getattr(m, "_packed_params", None), nn.Module)]
    assert len(linears) == 3
    assert all(m._packed_params._weight_bias()[0].dtype == torch.qint8 for m in linears)
    assert smaller.stored_params(reloaded) == count_params(model)


def test_the_int8_test_figure_is_the_reloaded_files(exported):
    out, _, best, data = exported
    assert _accuracy(_readme_int8(out, best), data) == best["smaller"]["models"]["int8"]["test_score"]


def test_the_half_file_holds_float16_and_agrees_with_the_float_model(exported):
    out, _, best, data = exported
    state = torch.load(out / "model-half.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    full = _float_model(best)
    full.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    half = _readme_half(out, best)
    agree = (_logits(half, data.x_test).argmax(1) == _logits(full, data.x_test).argmax(1)).float().mean()
    assert agree >= 0.98
    assert _accuracy(half, data) == best["smaller"]["models"]["half"]["test_score"]
    assert abs(best["smaller"]["models"]["half"]["agrees_with_float"] - float(agree)) < 1e-12


def test_a_bad_quantize_value_is_one_line(searched, capsys):
    _, common = searched
    rc = export_main([*common, "--quantize", "int4"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("python -m search.export: error: ") and "invalid choice: 'int4'" in err, err


def test_an_export_without_the_flags_removes_an_earlier_exports_smaller_files(searched, exported, tmp_path):
    _, common = searched
    out = tmp_path / "again"
    shutil.copytree(exported[0], out)
    rc, printed, err = _quiet(export_main, [*common, "--out", str(out)])
    assert rc == 0, err
    assert not (out / "model-int8.pt").exists() and not (out / "model-half.pt").exists()
    assert "smaller" not in json.loads((out / "best.json").read_text()) and "model-int8" not in printed


WEAK = WEAK_STUDY


def test_with_an_ensemble_exported_the_smaller_files_are_the_best_trials_and_say_so(tmp_path):
    """ensemble.pt has no smaller copies: the smaller files are the best trial's, and say so."""
    (tmp_path / "weak.toml").write_text(WEAK)
    args = run_args(tmp_path, "--trials", "8")
    args[args.index("--study") + 1] = str(tmp_path / "weak.toml")
    args[args.index("--epochs") : args.index("--epochs") + 2] = []
    assert _quiet(run_main, args)[0] == 0
    common = ["--storage", f"sqlite:///{tmp_path / 's.db'}", "--results-dir", str(tmp_path / "results"),
              "--device", "cpu", "--no-progress"]  # fmt: skip
    rc, printed, err = _quiet(export_main, [*common, "--quantize", "int8"])
    assert rc == 0, err
    out = tmp_path / "results" / "weak"
    best = json.loads((out / "best.json").read_text())
    assert best["ensemble"]["exported"] and (out / "ensemble.pt").is_file()
    record = best["smaller"]
    assert record["trial_number"] == best["trial_number"] and "(not the exported ensemble)" in record["of"]
    assert list(record["models"]) == ["float", "int8"] and not (out / "model-half.pt").exists()
    assert record["models"]["float"]["test_score"] == best["single_test_score"]
    assert f"smaller files of trial {best['trial_number']}'s model (not the exported ensemble)" in printed
    data = load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)
    int8 = _readme_int8(out, best)
    assert _accuracy(int8, data) == record["models"]["int8"]["test_score"]
