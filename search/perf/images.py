"""The images `python -m search.bench` trains on: the real CIFAR-10 JPEGs (the archive in
../shared/data or data/, extracted once into the cache dir), any ImageFolder tree given with
--data-dir, or, only when asked, a synthetic CIFAR-shaped tree. Both of the bench's paths read
the same tree: the notebook's through torchvision, the project's through `search.data.datasets`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search.data.datasets import CIFAR_DIR, CIFAR_TRAIN_FILES, Dataset, load_dataset
from search.data.image_files import cache_dir
from search.errors import UserError

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # the real CIFAR-10 as JPEGs
LOCAL_ARCHIVE = REPO / "data" / "cifar10-jpeg.tar.gz"  # a copy in the git-ignored data/ travels along
EXTRACTED_NAME = "cifar10-jpeg"  # under the cache dir (SEARCH_CACHE_DIR or ~/.cache/search)
SYNTHETIC_TRAIN = 50_000  # CIFAR-10's training set size, for --synthetic without --limit
SYNTHETIC_TEST_PER_CLASS = 2  # a test/ folder, so loading does not carve one out of train/

Progress = Callable[[str], None]  # says a line of what is happening (the CLI prints it)


@dataclass(frozen=True)
class Images:
    root: Path  # an ImageFolder tree: root/train/<class>/*, root/test/<class>/*
    synthetic: bool
    cache_dir: Path | None  # a private decode cache (synthetic trees only)


@contextlib.contextmanager
def prepare_images(
    *, synthetic: bool, data_dir: str | None, limit: int | None, seed: int, progress: Progress
) -> Iterator[Images]:
    """The image tree both paths read; a synthetic one lives in a temporary directory."""
    if synthetic:
        with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
            root = Path(tmp) / "images"
            n = SYNTHETIC_TRAIN if limit is None else synthetic_train_size(limit)
            progress(f"writing {n:,} synthetic CIFAR-shaped PNG images to {root}")
            write_synthetic_tree(root, n_train=n, seed=seed)
            yield Images(root, True, Path(tmp) / "cache")
        return
    root = Path(data_dir).expanduser() if data_dir else default_data_dir(progress)
    check_image_tree(root)
    yield Images(root, False, None)


def synthetic_train_size(limit: int, val_fraction: float = 0.1) -> int:
    """Enough train/ images that the training split (after validation) holds `limit`."""
    return max(10, math.ceil(limit / (1 - val_fraction)) + 1)


def write_synthetic_tree(root: Path, *, n_train: int, seed: int = 0) -> None:
    """Uniform random 32x32 RGB PNGs, labels round-robin over 10 classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = [f"class{c}" for c in range(10)]
    counts = {"train": n_train, "test": SYNTHETIC_TEST_PER_CLASS * len(classes)}
    for split, n in counts.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        for i in range(n):
            Image.fromarray(pixels[i]).save(root / split / classes[i % 10] / f"{i:05d}.png")


def default_data_dir(progress: Progress) -> Path:
    """The real CIFAR-10 JPEGs from ../shared/data (or data/), extracted once into the cache dir."""
    cache = cache_dir()
    target = cache / EXTRACTED_NAME
    if (target / ".complete").is_file():
        return target
    archive = next((a for a in (ARCHIVE, LOCAL_ARCHIVE) if a.is_file()), None)
    if archive is None:
        raise UserError(
            f"no --data-dir given and no CIFAR-10 archive at {ARCHIVE} or {LOCAL_ARCHIVE}: "
            "pass --data-dir DIR (an ImageFolder tree DIR/train/<class>/*.jpg) or --synthetic"
        )
    progress(f"extracting {archive} to {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EXTRACTED_NAME}-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without extraction filters; the archive is our own
                tar.extractall(tmp)  # noqa: S202
        (tmp / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except (OSError, tarfile.TarError) as e:
        raise UserError(f"cannot extract {archive} to {target}: {e}; pass --data-dir DIR") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_image_tree(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"--data-dir {root} does not exist; pass an image tree or --synthetic")
    if not (root / "train").is_dir():
        raise UserError(
            f"--data-dir {root}: the notebook path needs image files: expected "
            f"{root}/train/<class>/*.jpg (e.g. tar -xzf cifar10-jpeg.tar.gz -C DIR) or --synthetic"
        )


@contextlib.contextmanager
def _cache_dir(path: Path | None) -> Iterator[None]:
    """Point search.data.datasets's decode cache elsewhere for a while (synthetic trees are throwaway)."""
    if path is None:
        yield
        return
    old = os.environ.get("SEARCH_CACHE_DIR")
    os.environ["SEARCH_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SEARCH_CACHE_DIR", None)
        else:
            os.environ["SEARCH_CACHE_DIR"] = old


def load_bench_data(images: Images, device: torch.device, limit: int | None) -> Dataset:
    """(b)'s dataset: search.data.datasets's own loading, cut to the first `limit` training images."""
    has_pickles = any((d / CIFAR_TRAIN_FILES[0]).is_file() for d in (images.root / CIFAR_DIR, images.root))
    # "cifar10" shares the decode cache with searches; with pickles beside the tree it would
    # read those instead of the images the notebook path reads, so take the tree by name.
    name = "imagefolder" if has_pickles or images.synthetic else "cifar10"
    with _cache_dir(images.cache_dir):
        data = load_dataset(name, data_dir=images.root, device=device)
    if limit is not None and limit < len(data.x_train):
        data = dataclasses.replace(data, x_train=data.x_train[:limit], y_train=data.y_train[:limit])
    return data
