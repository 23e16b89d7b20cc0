"""Datasets: decoded once, normalized with train-split statistics, and moved to the device once.

A search runs many trials in one process, so `load_dataset` is memoized; reading image files
(and their decode cache on disk) is `search.data.image_files`' job, reading and encoding tables
`search.data.tables`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.data.dataset import Dataset
from search.data.image_files import (
    CIFAR_TRAIN_FILES,
    HOLDOUT_SEED,
    DataError,
    RawImages,
    load_tree,
    read_cifar_pickles,
)
from search.errors import first_line

DATASETS = ("cifar10", "digits", "imagefolder", "table")
IMAGE_DATASETS = DATASETS[:3]
CIFAR_DIR = "cifar-10-batches-py"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    return Path("data") if data_dir is None else Path(data_dir).expanduser()


def split_indices(n: int, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): disjoint, together range(n), each sorted; depends only on seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ---------------------------------------------------------------------------- load_dataset

_MEMO: dict[tuple, Dataset] = {}


def clear_cache() -> None:
    """Forget memoized datasets (the on-disk decode cache stays)."""
    _MEMO.clear()


def import_loaders() -> None:
    """Import what the loaders import on first use (scikit-learn, about 1.5 s here)."""
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    progress: bool = False,
    table: Any = None,
) -> Dataset:
    """The named dataset split into train/val/test, normalized, on `device`; for "table", the
    table `table` (a search.data.tables.TableSpec) describes.

    Memoized per process on (name, data_dir, device, val_fraction, split_seed, table): a search's
    many trials share one copy. `download` and `progress` only change how a first load happens.
    """
    _check_name(name)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    device = torch.device(device)
    if name == "table":
        if table is None:
            raise DataError('dataset "table" needs a table: train = PATH and target = COLUMN')
        key = (name, table, str(device), float(val_fraction), int(split_seed))
        if key not in _MEMO:
            from search.data.tables import load_table

            _MEMO[key] = load_table(table, device=device, val_fraction=val_fraction, split_seed=split_seed)
        return _MEMO[key]
    # digits ignores data_dir; an absolute path keeps the key valid if the cwd changes
    where = None if name == "digits" else str(resolve_data_dir(data_dir).resolve())
    key = (name, where, str(device), float(val_fraction), int(split_seed))
    if key not in _MEMO:
        raw = load_raw(name, data_dir=data_dir, download=download, progress=progress)
        _MEMO[key] = _build_dataset(name, raw, device, val_fraction, split_seed)
    return _MEMO[key]


def _build_dataset(name, raw: RawImages, device, val_fraction, split_seed) -> Dataset:
    train_idx, val_idx = split_indices(len(raw.train_y), val_fraction=val_fraction, seed=split_seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"{name}: {len(raw.train_y)} training images cannot be split with "
            f"val_fraction={val_fraction}: both parts need at least one image"
        )
    _, h, w, c = raw.train_x.shape

    def to_device(x: np.ndarray) -> torch.Tensor:
        # uint8 [N,H,W,C] -> uint8 [N,C,H,W] on the device: ship 1 byte a value, reorder there
        return torch.as_tensor(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2).contiguous()

    train_u8 = to_device(raw.train_x[train_idx])
    # statistics of the train part only: validation and test must not leak into normalization
    mean, std = _channel_stats(train_u8)
    shift = torch.tensor(mean, device=device).view(1, c, 1, 1) * 255.0
    scale = 1.0 / (torch.tensor(std, device=device).view(1, c, 1, 1) * 255.0)

    def normalized(u8: torch.Tensor) -> torch.Tensor:
        return u8.float().sub_(shift).mul_(scale).reshape(len(u8), -1)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y.astype(np.int64)).to(device)

    return Dataset(
        name=name,
        classes=raw.classes,
        image_shape=(c, h, w),
        mean=mean,
        std=std,
        x_train=normalized(train_u8),
        y_train=labels(raw.train_y[train_idx]),
        x_val=normalized(to_device(raw.train_x[val_idx])),
        y_val=labels(raw.train_y[val_idx]),
        x_test=normalized(to_device(raw.test_x)),
        y_test=labels(raw.test_y),
        split_seed=int(split_seed),
        val_fraction=float(val_fraction),
    )


def _channel_stats(u8: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std in [0, 1] units of uint8 [N, C, H, W], from 256-bin histograms:
    float32 reductions over tens of millions of values drift, and Welford (torch.std) is slow."""
    hist = [torch.bincount(u8[:, ch].reshape(-1), minlength=256) for ch in range(u8.shape[1])]
    counts = torch.stack(hist).cpu().double()  # [C, 256]; the one device->host sync
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum(dim=1)
    mean = counts @ levels / n
    var = (counts * (levels - mean[:, None]) ** 2).sum(dim=1) / n
    std = var.sqrt().clamp(min=1e-6)  # a constant channel must not divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())


# ---------------------------------------------------------------------------- load_raw


def load_raw(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = False,
) -> RawImages:
    """Decoded uint8 images of the named dataset, and its official or fixed-seed test split."""
    _check_name(name)
    if name == "digits":
        return _load_digits()
    root = resolve_data_dir(data_dir)
    if name == "cifar10":
        return _load_cifar10(root, download=download, progress=progress)
    _require_dir(root, name)
    if not (root / "train").is_dir():
        raise DataError(
            f"{root}: no ImageFolder tree here: expected {root}/train/<class>/<images> "
            f"(and optionally test/<class>/); pass --data-dir DIR"
        )
    return load_tree(root, name, progress=progress)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _require_dir(root: Path, name: str) -> None:
    if not root.exists():
        raise DataError(f"data directory {root} does not exist (dataset {name}); pass --data-dir DIR")
    if not root.is_dir():
        raise DataError(
            f"data directory {root} is not a directory (dataset {name}); "
            f"an archive must be extracted first (e.g. tar -xzf FILE -C DIR), then pass DIR"
        )


def _load_digits() -> RawImages:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    y = bunch.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=HOLDOUT_SEED)
    train, test = np.sort(train), np.sort(test)
    classes = tuple(str(d) for d in range(10))
    return RawImages(x[train], y[train], x[test], y[test], classes)


# ---------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(root: Path, *, download: bool, progress: bool) -> RawImages:
    if root.exists():
        _require_dir(root, "cifar10")
    pickles = _find_cifar_pickles(root)
    if pickles is not None:
        return read_cifar_pickles(pickles)
    if (root / "train").is_dir():
        return load_tree(root, "cifar10", progress=progress)
    layouts = f"{CIFAR_DIR}/ or an ImageFolder tree train/<class>/, test/<class>/"
    if not download:
        _require_dir(root, "cifar10")
        raise DataError(f"{root}: no CIFAR-10 found: expected {layouts}; pass --data-dir DIR")
    _download_cifar10(root, layouts)
    pickles = _find_cifar_pickles(root)
    if pickles is None:
        raise DataError(f"{root}: CIFAR-10 download finished but {root / CIFAR_DIR} is incomplete")
    return read_cifar_pickles(pickles)


def _find_cifar_pickles(root: Path) -> Path | None:
    """torchvision's folder, under root or root itself."""
    for folder in (root / CIFAR_DIR, root):
        if (folder / CIFAR_TRAIN_FILES[0]).is_file():
            return folder
    return None


def _download_cifar10(root: Path, layouts: str) -> None:
    import torchvision.datasets  # slow import; only the download path needs it

    try:
        for train in (True, False):
            torchvision.datasets.CIFAR10(root=str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise DataError(
            f"cannot download CIFAR-10 into {root} (no network?): pass --data-dir DIR holding "
            f"{layouts} (e.g. tar -xzf cifar10-jpeg.tar.gz -C DIR) [{first_line(e)}]"
        ) from None
