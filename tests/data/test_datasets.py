"""search.data: splits, normalization, the three datasets' layouts, the decode
cache, and errors."""

from __future__ import annotations

import math
import pickle
import shutil
import subprocess
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from search.data import image_files
from search.data.datasets import DataError, clear_cache, load_dataset, load_raw, split_indices
from search.errors import UserError

CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
REAL_ARCHIVE = Path(__file__).resolve().parents[3] / "shared/data/cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "cache"))
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------------------- helpers


def write_cifar_pickles(folder: Path, per_batch: int = 4, seed: int = 0) -> np.ndarray:
    """torchvision's layout with Python-2 style bytes keys; returns all train rows [N, 3072]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        if i == 0:  # sample 0: channel 0 (red) all 255, green and blue 0
            x[0] = 0
            x[0, :1024] = 255
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / fname, "wb") as f:
            pickle.dump({b"data": x, b"labels": labels}, f)
        if fname != "test_batch":
            rows.append(x)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES]}, f)
    return np.concatenate(rows)


def write_image_tree(root: Path, split: str, classes, per_class: int, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / c / f"{i:04d}.png")


# ---------------------------------------------------------------------------- splits


def test_split_is_disjoint_covers_all_and_is_deterministic():
    train, val = split_indices(103, val_fraction=0.2, seed=7)
    assert len(val) == round(103 * 0.2)
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(103))
    train2, val2 = split_indices(103, val_fraction=0.2, seed=7)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)


def test_split_changes_with_seed():
    _, val_a = split_indices(1000, val_fraction=0.1, seed=0)
    _, val_b = split_indices(1000, val_fraction=0.1, seed=1)
    assert not np.array_equal(val_a, val_b)


# ---------------------------------------------------------------------------- digits


def test_digits_has_expected_shapes_dtypes_and_device():
    ds = load_dataset("digits")
    assert ds.in_features == 64 and ds.n_classes == 10 and ds.image_shape == (1, 8, 8)
    assert ds.classes == tuple("0123456789")
    assert ds.device == torch.device("cpu")
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape[1] == ds.x_val.shape[1] == ds.x_test.shape[1] == 64
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 1797
    assert len(ds.x_test) == math.ceil(1797 * 0.2)  # sklearn rounds the test part up
    raw = load_raw("digits")
    assert raw.train_x.dtype == np.uint8 and raw.train_x.max() == 255


def test_digits_train_split_is_standardized_with_train_statistics():
    ds = load_dataset("digits")
    assert abs(ds.x_train.mean().item()) < 1e-5
    assert abs(ds.x_train.std().item() - 1.0) < 1e-3
    # the validation split is normalized with the train numbers, so it is only close to (0, 1)
    assert abs(ds.x_val.mean().item()) < 0.2


def test_digits_splits_share_no_samples_and_test_ignores_split_seed():
    raw = load_raw("digits")
    ds = load_dataset("digits", val_fraction=0.25, split_seed=3)
    train_idx, val_idx = split_indices(len(raw.train_y), val_fraction=0.25, seed=3)
    assert not set(train_idx) & set(val_idx)
    # each split holds exactly the raw rows its indices name (test is never mixed in)
    to_pixels = lambda x: ds.denormalize(x).mul(255).round().to(torch.uint8).numpy()  # noqa: E731
    assert np.array_equal(to_pixels(ds.x_train)[:, 0], raw.train_x[train_idx][..., 0])
    assert np.array_equal(to_pixels(ds.x_val)[:, 0], raw.train_x[val_idx][..., 0])
    assert np.array_equal(to_pixels(ds.x_test)[:, 0], raw.test_x[..., 0])
    assert torch.equal(ds.y_train, torch.as_tensor(raw.train_y[train_idx]))
    other = load_dataset("digits", val_fraction=0.25, split_seed=4)
    assert torch.equal(ds.y_test, other.y_test)
    assert not torch.equal(ds.y_val, other.y_val)


def test_load_dataset_is_memoized_per_arguments():
    a = load_dataset("digits")
    assert load_dataset("digits", device="cpu") is a
    assert load_dataset("digits", split_seed=1) is not a
    clear_cache()
    assert load_dataset("digits") is not a


# ---------------------------------------------------------------------------- cifar10


def test_cifar_pickle_layout_loads_in_chw_pixel_order(tmp_path):
    rows = write_cifar_pickles(tmp_path / "cifar-10-batches-py")
    raw = load_raw("cifar10", data_dir=tmp_path, download=False)
    assert raw.classes == CIFAR_CLASSES
    assert raw.train_x.shape == (20, 32, 32, 3) and raw.test_x.shape == (4, 32, 32, 3)
    assert raw.train_x[0, ..., 0].min() == 255 and raw.train_x[0, ..., 1:].max() == 0

    ds = load_dataset("cifar10", data_dir=tmp_path, download=False, val_fraction=0.25)
    assert ds.image_shape == (3, 32, 32) and ds.in_features == 3072
    train_idx, _ = split_indices(20, val_fraction=0.25, seed=0)
    pixels = ds.denormalize(ds.x_train)
    # flattened rows are in C,H,W order, exactly the pickle's own row order
    expected = torch.tensor(rows[train_idx]).float() / 255
    assert torch.allclose(pixels.reshape(len(pixels), -1), expected, atol=1e-5)
    assert train_idx[0] == 0  # sample 0 is in the train part with seed 0
    red = pixels[0]
    assert torch.allclose(red[0], torch.ones(32, 32)) and red[1:].abs().max() < 1e-5


def test_cifar_accepts_the_pickle_folder_itself(tmp_path):
    write_cifar_pickles(tmp_path / "batches")
    raw = load_raw("cifar10", data_dir=tmp_path / "batches", download=False)
    assert len(raw.train_y) == 20 and raw.train_y.dtype == np.int64


def test_cifar_image_tree_loads_and_second_load_uses_cache(tmp_path, monkeypatch):
    write_image_tree(tmp_path, "train", CIFAR_CLASSES[:3], per_class=4)
    write_image_tree(tmp_path, "test", CIFAR_CLASSES[:3], per_class=2, seed=1)
    ds = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.25)
    assert ds.classes == CIFAR_CLASSES[:3] and ds.image_shape == (3, 32, 32)
    assert len(ds.y_train) + len(ds.y_val) == 12 and len(ds.y_test) == 6
    # same numbers as torchvision's ToTensor + flatten
    first = Image.open(tmp_path / "test" / CIFAR_CLASSES[0] / "0000.png")
    expected = torchvision.transforms.functional.to_tensor(first)
    assert torch.allclose(ds.denormalize(ds.x_test[:1])[0], expected, atol=1e-5)
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(image_files, "_decode_images", no_decoding)
    clear_cache()
    again = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.25)
    assert again is not ds and torch.equal(again.x_train, ds.x_train)


def test_cache_is_ignored_when_the_tree_changes(tmp_path):
    write_image_tree(tmp_path, "train", ["a", "b"], per_class=3)
    assert len(load_raw("imagefolder", data_dir=tmp_path).train_y) + 1 == 6  # 1 held out as test
    write_image_tree(tmp_path, "train", ["c"], per_class=3)
    raw = load_raw("imagefolder", data_dir=tmp_path)
    assert raw.classes == ("a", "b", "c") and len(raw.train_y) + len(raw.test_y) == 9
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 2


def test_offline_download_raises_one_line_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_dir=tmp_path / "data")
    message = str(err.value)
    assert isinstance(err.value, UserError)
    assert "\n" not in message and "--data-dir" in message and "cannot download" in message


def test_download_path_reads_what_torchvision_wrote(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            folder = Path(root) / "cifar-10-batches-py"
            if not folder.exists():
                write_cifar_pickles(folder)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.chdir(tmp_path)
    raw = load_raw("cifar10")  # default data_dir: ./data
    assert calls and all(root == "data" and download for root, _, download in calls)
    assert raw.classes == CIFAR_CLASSES and len(raw.test_y) == 4


def test_cifar_without_data_and_without_download_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_raw("cifar10", download=False)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_raw("cifar10", download=False)


# ---------------------------------------------------------------------------- imagefolder


def test_imagefolder_without_test_holds_out_stratified_tenth(tmp_path):
    write_image_tree(tmp_path, "train", ["cat", "dog"], per_class=10, size=(6, 4))
    raw = load_raw("imagefolder", data_dir=tmp_path)
    assert raw.classes == ("cat", "dog") and raw.train_x.shape[1:] == (4, 6, 3)
    assert sorted(raw.test_y.tolist()) == [0, 1]
    assert np.array_equal(load_raw("imagefolder", data_dir=tmp_path).test_x, raw.test_x)


def test_imagefolder_skips_empty_class_and_converts_grayscale_to_rgb(tmp_path):
    write_image_tree(tmp_path, "train", ["b"], per_class=3, size=(5, 5))
    (tmp_path / "train" / "a_empty").mkdir()
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    Image.new("L", (5, 5), color=128).save(tmp_path / "train" / "b" / "gray.PNG")
    raw = load_raw("imagefolder", data_dir=tmp_path)
    assert raw.classes == ("b",)
    assert len(raw.train_y) + len(raw.test_y) == 4 and raw.train_x.shape[-1] == 3


def test_imagefolder_jpegs_decode_like_pillow(tmp_path):
    write_image_tree(tmp_path, "train", ["a", "b"], per_class=3, size=(7, 5))
    write_image_tree(tmp_path, "test", ["b"], per_class=1, size=(7, 5))
    for png in (tmp_path / "train").rglob("*.png"):
        Image.open(png).save(png.with_suffix(".JPG"), quality=80)
        png.unlink()
    raw = load_raw("imagefolder", data_dir=tmp_path)
    files = sorted((tmp_path / "train").rglob("*.JPG"))  # class, then file name: the load order
    pillow = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert np.array_equal(raw.train_x, pillow)
    assert raw.train_y.tolist() == [0, 0, 0, 1, 1, 1] and raw.test_y.tolist() == [1]


def test_damaged_jpeg_raises_naming_the_file(tmp_path):
    write_image_tree(tmp_path, "train", ["a"], per_class=2, size=(8, 8))
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_raw("imagefolder", data_dir=tmp_path)


def test_imagefolder_with_mixed_sizes_names_the_odd_file(tmp_path):
    write_image_tree(tmp_path, "train", ["a"], per_class=2, size=(8, 8))
    Image.new("RGB", (9, 8)).save(tmp_path / "train" / "a" / "odd.png")
    with pytest.raises(DataError, match="odd.png"):
        load_raw("imagefolder", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "layout", "pattern"),
    [
        ("imagefolder", None, "does not exist"),
        ("imagefolder", "empty", "expected .*train/<class>"),
        ("imagefolder", "train_without_classes", "no class folders"),
        ("imagefolder", "classes_without_images", "no images"),
        ("cifar10", "empty", "expected cifar-10-batches-py/ or an ImageFolder tree"),
    ],
)
def test_unusable_data_dir_raises_one_line_error_naming_it(tmp_path, name, layout, pattern):
    root = tmp_path / "d"
    if layout is not None:
        root.mkdir()
    if layout == "train_without_classes":
        (root / "train").mkdir()
    if layout == "classes_without_images":
        (root / "train" / "a").mkdir(parents=True)
        (root / "train" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=pattern) as err:
        load_raw(name, data_dir=root, download=False)
    assert str(root) in str(err.value) and "\n" not in str(err.value)


def test_unknown_dataset_raises_listing_the_known_ones():
    with pytest.raises(DataError, match="cifar10, digits, imagefolder"):
        load_dataset("mnist")


def test_bad_val_fraction_raises():
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


# ---------------------------------------------------------------------------- real CIFAR-10


def test_real_cifar10_archive_loads_fully(tmp_path):
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"{REAL_ARCHIVE} not present (../shared/data beside the repository)")
    dest = tmp_path / "cifar"
    dest.mkdir()
    if shutil.which("tar"):  # ~1 s, against ~6 s for the tarfile module
        subprocess.run(["tar", "-xzf", str(REAL_ARCHIVE), "-C", str(dest)], check=True)
    else:
        with tarfile.open(REAL_ARCHIVE) as tar:
            tar.extractall(dest, filter="data")
    raw = load_raw("cifar10", data_dir=dest, download=False)
    assert raw.train_x.shape == (50_000, 32, 32, 3) and raw.test_x.shape == (10_000, 32, 32, 3)
    assert raw.classes == CIFAR_CLASSES
    assert np.bincount(raw.train_y).tolist() == [5000] * 10
    assert np.bincount(raw.test_y).tolist() == [1000] * 10
