"""search.bench runs both training paths and reports them; the trainer's graph path matches eager.

Nothing here asserts a speed: the shared test machines are far too noisy for that.
"""

import json
import tarfile
import time

import numpy as np
import pytest
import torch

from search import bench
from search.data.datasets import load_dataset
from search.perf import images as bench_images
from search.perf import notebook
from search.training import trainer
from search.training.config import TrainConfig
from search.training.trainer import fit

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
    # The matmul floor: 6 flops per multiply-add per sample (three matmuls a layer), 8 batches
    assert r["epoch_gflop"] == 6 * (3072 * 512 + 512 * 256 + 256 * 10) * 512 / 1e9
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
        "--cuda-graphs", "on", "--suite-study", "digits", "--suite-trials", "2",
        "--suite-epochs", "1", "--suite-jobs", "1", "--suite-stacks", "1,2", "--json", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    r = json.loads(out.read_text())
    assert [b["batch_size"] for b in r["bench"]] == [128, 512]
    for b in r["bench"]:
        assert b["search_epoch_s"] > 0 and b["baseline_epoch_s"] > 0
    # --cuda-graphs on, on the CPU: the stand-in replays, and it matches eager bit for bit
    # (at batch 512 the 256 images make no full batch: nothing to capture)
    assert [b["search_cuda_graphs"] for b in r["bench"]] == [True, False]
    assert r["bench"][0]["graphs_max_rel_loss_diff"] == 0.0 and r["bench"][0]["eager_epoch_s"] > 0
    study, stacked = r["studies"]
    assert study["returncode"] == 0 and study["finished"] == 2 and study["jobs"] == 1
    assert study["trials_per_hour_wall"] > 0 and study["stack"] == 1
    assert stacked["returncode"] == 0 and stacked["finished"] == 2 and stacked["stack"] == 2
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[0].startswith("suite on cpu") and lines[-1].split()[:4] == ["1", "2", "off", "2"]


# ---------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu", val_fraction=0.2, split_seed=0)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(hidden=(32,), dropout=0.2, epochs=3, seed=3, batch_size=100),  # short last batch
        TrainConfig(hidden=(24,), optimizer="rmsprop", batchnorm=False, epochs=2, batch_size=115),
    ],
)
def test_graph_replays_train_each_full_batch_in_the_seeds_order(digits, config, monkeypatch):
    """What a replay trains on is what it copied into the graph's fixed index buffer: recorded at
    every replay, it must be the seed's shuffled order, batch by batch, as torch.randperm gives it."""
    seen = []
    real_capture = trainer._GraphedStep._capture

    def capture(self, idx):
        real_capture(self, idx)
        real_replay = self.graph.replay
        self.graph.replay = lambda: seen.append(self.idx.clone()) or real_replay()

    monkeypatch.setattr(trainer._GraphedStep, "_capture", capture)
    result = fit(config, digits, cuda_graphs=True)
    n, bs = len(digits.x_train), config.batch_size
    gen = torch.Generator().manual_seed(config.seed)
    expected = []
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        expected += [order[b * bs : (b + 1) * bs] for b in range(n // bs)]
    expected = expected[trainer.GRAPH_WARMUP_STEPS :]  # the first full batches run eagerly
    assert result.cuda_graphs and len(seen) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))


def test_trainer_uses_graphs_by_default_only_on_cuda(digits):
    assert not fit(TrainConfig(hidden=(8,), epochs=20), digits).cuda_graphs


def test_epoch_seconds_leave_validation_out(digits, monkeypatch):
    real_evaluate = trainer.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.25)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", slow_evaluate)
    started = time.perf_counter()
    result = fit(TrainConfig(hidden=(16,), epochs=3), digits)
    wall = time.perf_counter() - started
    seconds = [m.seconds for m in result.history]
    assert all(s > 0 for s in seconds)
    assert result.train_seconds <= wall - 3 * 0.25  # the 0.75 s spent validating is not training


def test_fused_cpu_optimizers_step_as_the_plain_ones_do():
    from search.training.device import optimizer_flags

    cpu = torch.device("cpu")
    assert optimizer_flags(cpu, "sgd") == {"fused": True}
    assert optimizer_flags(cpu, "adamw") == {"fused": True}
    assert optimizer_flags(cpu, "rmsprop") == {"foreach": True}  # PyTorch has no fused RMSprop
    plain = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
    }
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    for name, cls in plain.items():
        config = TrainConfig(optimizer=name, lr=0.01, weight_decay=1e-3)
        torch.manual_seed(0)
        ours, ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        ref.load_state_dict(ours.state_dict())
        opt = trainer.make_optimizer(config, ours, cpu)
        kwargs = {"momentum": config.momentum} if name in ("sgd", "rmsprop") else {}
        ref_opt = cls(ref.parameters(), lr=0.01, weight_decay=1e-3, foreach=False, **kwargs)
        assert bool(opt.defaults.get("fused")) == (name != "rmsprop")
        for _ in range(3):
            for model, o in ((ours, opt), (ref, ref_opt)):
                o.zero_grad()
                model(x).square().sum().backward()
                o.step()
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_graphs_are_opt_in_through_the_environment(monkeypatch):
    from search.training.device import cuda_graphs_enabled

    assert not cuda_graphs_enabled(torch.device("cpu"))
    monkeypatch.delenv("SEARCH_CUDA_GRAPHS", raising=False)
    assert not cuda_graphs_enabled(torch.device("cuda"))  # unverified on a GPU: off by default
    monkeypatch.setenv("SEARCH_CUDA_GRAPHS", "0")
    assert not cuda_graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("SEARCH_CUDA_GRAPHS", "1")
    assert cuda_graphs_enabled(torch.device("cuda"))


def test_synthetic_tree_is_cifar_shaped(tmp_path):
    from PIL import Image

    bench_images.write_synthetic_tree(tmp_path, n_train=12)
    files = sorted((tmp_path / "train").rglob("*.png"))
    assert len(files) == 12 and len(list((tmp_path / "test").rglob("*.png"))) == 20
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert bench_images.synthetic_train_size(512) * 0.9 >= 512
