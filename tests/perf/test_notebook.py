"""search.bench runs both training paths and reports them.

Nothing here asserts a speed: the shared test machines are far too noisy for that.
"""

import json
import tarfile

import numpy as np
import pytest
import torch

from search import bench
from search.perf import images as bench_images
from search.perf import notebook

REQUIRED = (
    "baseline_epoch_s",
    "search_epoch_s",
    "speedup",
    "device",
    "batch_size",
    "torch",
    "n_train",
    "epochs_measured",
    "baseline_epoch_times_s",
    "search_epoch_times_s",
)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m search.bench: error: ") and "\n" not in err, err
    return err


def test_bench_on_synthetic_images_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    argv = ["--synthetic", "--limit", "512", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in r, key
    assert r["n_train"] == 512 and r["batch_size"] == 64 and r["epochs_measured"] == 1
    assert r["synthetic"] is True and r["device"] == "cpu" and r["torch"] == torch.__version__
    assert r["model"] == "3072-512(relu)-256(relu)-10"
    assert r["config"]["optimizer"] == "sgd" and r["config"]["lr"] == 1e-3
    for key in ("baseline_epoch_s", "search_epoch_s", "speedup", "baseline_warmup_s"):
        assert r[key] > 0, key
    assert len(r["baseline_epoch_times_s"]) == len(r["search_epoch_times_s"]) == 1
    assert all(np.isfinite(r["baseline_train_loss"])) and all(np.isfinite(r["search_train_loss"]))
    captured = capsys.readouterr()
    table = captured.out
    assert "SYNTHETIC" in table and "--limit 512" in table
    rows = [line for line in table.splitlines() if line.startswith(("(a)", "(b)"))]
    assert len(rows) == 2 and rows[1].split()[-1].endswith("x")
    # The matmul floor, 8 full batches: per sample and layer, 2 flops per multiply-add of the forward
    # matmul and the weight's gradient, and of the input's gradient but for the first layer (the data)
    assert r["epoch_gflop"] == 2 * (3 * (3072 * 512 + 512 * 256 + 256 * 10) - 3072 * 512) * 512 / 1e9
    assert r["search_gflops"] == r["epoch_gflop"] / r["search_epoch_s"] and r["mm_gflops"] > 0
    assert "matmul floor:" in table
    assert "warm-up" in captured.err  # progress goes to stderr


def test_a_missing_data_dir_is_a_one_line_error(tmp_path, capsys):
    assert bench.main(["--data-dir", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "--synthetic" in _one_line_error(capsys)


def test_a_data_dir_without_image_files_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert bench.main(["--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    assert "train/<class>" in _one_line_error(capsys)


def test_no_data_dir_and_no_archive_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_images, "ARCHIVE", tmp_path / "missing.tar.gz")
    monkeypatch.setattr(bench_images, "LOCAL_ARCHIVE", tmp_path / "data" / "missing.tar.gz")
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "cache"))
    assert bench.main(["--device", "cpu"]) == 2
    err = _one_line_error(capsys)
    assert "--data-dir" in err and "--synthetic" in err


@pytest.mark.parametrize(
    "argv", [["--batch-size", "0"], ["--device", "tpu"], ["--suite-jobs", "x"], ["--lr", "-1"]]
)
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    assert bench.main([*argv, "--synthetic"]) == 2
    _one_line_error(capsys)


def test_the_default_data_dir_is_extracted_from_the_archive_once(tmp_path, monkeypatch):
    src = tmp_path / "src"
    bench_images.write_synthetic_tree(src, n_train=20)
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(src / split, arcname=split)
    monkeypatch.setattr(bench_images, "ARCHIVE", tmp_path / "elsewhere.tar.gz")
    monkeypatch.setattr(bench_images, "LOCAL_ARCHIVE", archive)
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "cache"))
    said = []
    root = bench_images.default_data_dir(said.append)
    assert root == tmp_path / "cache" / bench_images.EXTRACTED_NAME and len(said) == 1
    assert len(list((root / "train").rglob("*.png"))) == 20
    assert bench_images.default_data_dir(said.append) == root and len(said) == 1  # not again


def test_both_paths_train_the_same_images(tmp_path):
    root = tmp_path / "images"
    bench_images.write_synthetic_tree(root, n_train=60)
    images = bench_images.Images(root, True, tmp_path / "cache")
    data = bench_images.load_bench_data(images, torch.device("cpu"), limit=40)
    opts = notebook.BenchOptions(limit=40, workers=0)
    loop = notebook.NotebookLoop(opts, images, data, torch.device("cpu"))
    assert loop.n == len(data.x_train) == 40
    pixels = torch.stack([x.flatten() for x, _ in loop.loader.dataset])
    assert torch.allclose(pixels, data.x_train, atol=1e-5)


def test_suite_runs_small_on_cpu_and_prints_one_table_last(tmp_path, capsys):
    out = tmp_path / "suite.json"
    argv = [
        "--suite", "--device", "cpu", "--synthetic", "--limit", "256", "--epochs", "1",
        "--suite-study", "digits", "--suite-trials", "2",
        "--suite-epochs", "1", "--suite-jobs", "1", "--suite-stacks", "1,2", "--json", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    r = json.loads(out.read_text())
    assert [b["batch_size"] for b in r["bench"]] == [128, 512]
    for b in r["bench"]:
        assert b["search_epoch_s"] > 0 and b["baseline_epoch_s"] > 0
    study, stacked = r["studies"]
    assert study["returncode"] == 0 and study["finished"] == 2 and study["jobs"] == 1
    assert study["trials_per_hour_wall"] > 0 and study["stack"] == 1
    assert stacked["returncode"] == 0 and stacked["finished"] == 2 and stacked["stack"] == 2
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[0].startswith("suite on cpu") and lines[-1].split()[:3] == ["1", "2", "2"]


def test_synthetic_tree_is_cifar_shaped(tmp_path):
    from PIL import Image

    bench_images.write_synthetic_tree(tmp_path, n_train=12)
    files = sorted((tmp_path / "train").rglob("*.png"))
    assert len(files) == 12 and len(list((tmp_path / "test").rglob("*.png"))) == 20
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert bench_images.synthetic_train_size(512) * 0.9 >= 512
