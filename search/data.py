"""Datasets: decoded once, normalized with train-split statistics, and moved to the device once.

A search runs many trials in one process, so `load_dataset` is memoized, and an image tree's
decoded pixels are cached on disk (decoding 60,000 JPEGs takes seconds; loading the .npz does not).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from search.errors import UserError

DATASETS = ("cifar10", "digits", "imagefolder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CACHE_VERSION = "1"  # bump when the cached arrays' meaning changes, so old files are ignored
HOLDOUT_SEED = 0  # carving a missing test split must not depend on the user's split_seed
DECODE_CHUNK = 256  # images per thread task: large enough that scheduling overhead vanishes


class DataError(UserError):
    """A dataset that cannot be found, downloaded or decoded; the message names the path."""


@dataclass(frozen=True)
class RawImages:
    """Decoded, un-normalized pixels in host memory."""

    train_x: np.ndarray  # uint8 [N, H, W, C]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray  # uint8 [M, H, W, C]
    test_y: np.ndarray  # int64 [M]
    classes: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Dataset:
    """What the trainer consumes; every tensor already lives on the training device."""

    name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, from the train split only
    std: tuple[float, ...]
    x_train: torch.Tensor = field(repr=False)  # float32 [N, C*H*W], normalized, C,H,W order
    y_train: torch.Tensor = field(repr=False)  # int64 [N]
    x_val: torch.Tensor = field(repr=False)
    y_val: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    split_seed: int
    val_fraction: float

    @property
    def in_features(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized rows [N, C*H*W] -> pixels [N, C, H, W] in [0, 1] on the CPU, for pictures."""
        x = x.detach().to("cpu", torch.float32).reshape(-1, *self.image_shape)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x * std + mean).clamp_(0.0, 1.0)


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
) -> Dataset:
    """The named dataset split into train/val/test, normalized, on `device`.

    Memoized per process on (name, data_dir, device, val_fraction, split_seed): a search's many
    trials share one copy. `download` and `progress` only change how a first load happens.
    """
    _check_name(name)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    device = torch.device(device)
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
    return _load_tree(root, name, progress=progress)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _require_dir(root: Path, name: str) -> None:
    if not root.exists():
        raise DataError(
            f"data directory {root} does not exist (dataset {name}); pass --data-dir DIR"
        )
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
    train, test = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=y, random_state=HOLDOUT_SEED
    )
    train, test = np.sort(train), np.sort(test)
    classes = tuple(str(d) for d in range(10))
    return RawImages(x[train], y[train], x[test], y[test], classes)


# ---------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(root: Path, *, download: bool, progress: bool) -> RawImages:
    if root.exists():
        _require_dir(root, "cifar10")
    pickles = _find_cifar_pickles(root)
    if pickles is not None:
        return _read_cifar_pickles(pickles)
    if (root / "train").is_dir():
        return _load_tree(root, "cifar10", progress=progress)
    layouts = f"{CIFAR_DIR}/ or an ImageFolder tree train/<class>/, test/<class>/"
    if not download:
        _require_dir(root, "cifar10")
        raise DataError(f"{root}: no CIFAR-10 found: expected {layouts}; pass --data-dir DIR")
    _download_cifar10(root, layouts)
    pickles = _find_cifar_pickles(root)
    if pickles is None:
        raise DataError(f"{root}: CIFAR-10 download finished but {root / CIFAR_DIR} is incomplete")
    return _read_cifar_pickles(pickles)


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
            f"{layouts} (e.g. tar -xzf cifar10-jpeg.tar.gz -C DIR) [{_one_line(e)}]"
        ) from None


def _read_cifar_pickles(folder: Path) -> RawImages:
    train = [_read_cifar_batch(folder / f) for f in CIFAR_TRAIN_FILES]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    meta = _unpickle(folder / "batches.meta")
    classes = tuple(_bytes_to_str(c) for c in _field(meta, "label_names", folder / "batches.meta"))
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return RawImages(train_x, train_y, test_x, test_y, classes)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    # rows are 3072 bytes: the red plane, then green, then blue (CHW) -> NHWC like decoded images
    data = np.asarray(_field(batch, "data", path), dtype=np.uint8)
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.asarray(_field(batch, "labels", path), dtype=np.int64)
    return np.ascontiguousarray(x), y


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing; the CIFAR-10 folder {path.parent} is incomplete")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # any unpickling failure means a damaged file, not a bug here
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({_one_line(e)})") from None


def _field(d: dict, key: str, path: Path):
    # Python 2 pickles give bytes keys under encoding="bytes"; files written by Python 3 give str.
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: not a CIFAR-10 batch (no {key!r} entry)")


def _bytes_to_str(s) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


# ---------------------------------------------------------------------------- image trees


def _load_tree(root: Path, name: str, *, progress: bool) -> RawImages:
    """An ImageFolder tree train/<class>/*, optional test/<class>/*, through the disk cache."""
    train_files, classes = _list_split(root / "train", None)
    test_files = _list_split(root / "test", classes)[0] if (root / "test").is_dir() else []
    cache = _cache_path(root, name, train_files + test_files)
    raw = _read_cache(cache)
    if raw is None:
        raw = _decode_tree(train_files, test_files, classes, progress=progress)
        _write_cache(cache, raw)
    if len(raw.test_y) == 0:
        raw = _carve_test(raw, root)
    return raw


def _list_split(split: Path, classes: tuple[str, ...] | None):
    """[(path, label, stat)] of the images under split/<class>/, and the class names used."""
    names = sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    if classes is None and not names:
        raise DataError(f"{split}: no class folders; expected {split}/<class>/<images>")
    found = {n: list(_walk_images(split / n)) for n in names}
    if classes is None:  # train/ decides the classes; a folder without images is skipped
        classes = tuple(n for n in names if found[n])
        if not classes:
            exts = " ".join(IMAGE_EXTENSIONS)
            raise DataError(f"{split}: no images ({exts}) in any class folder")
    index = {c: i for i, c in enumerate(classes)}
    files = []
    for n in names:
        if found[n] and n not in index:
            raise DataError(f"{split / n}: class {n!r} has no images under train/")
        files += [(path, index[n], st) for path, st in found[n]]
    return files, classes


def _walk_images(folder: Path) -> Iterator[tuple[str, os.stat_result]]:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk_images(Path(entry.path))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            yield entry.path, entry.stat()


def _decode_tree(train_files, test_files, classes, *, progress: bool) -> RawImages:
    paths = [p for p, _, _ in train_files + test_files]
    x = _decode_images(paths, progress=progress)
    y = np.array([label for _, label, _ in train_files + test_files], dtype=np.int64)
    n = len(train_files)
    return RawImages(x[:n], y[:n], x[n:], y[n:], classes)


def _decode_images(paths: list[str], *, progress: bool = False) -> np.ndarray:
    """uint8 [N, H, W, 3], decoded in chunks on threads.

    Pillow releases the GIL only while it decodes, so threads pay off for large images; for
    32x32 JPEGs the Python-side header parsing dominates and ~6 s for 60,000 is the floor.
    """
    chunks = [paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    out = np.empty((0, 0, 0, 3), dtype=np.uint8)
    start = 0
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        with _progress_bar(len(paths), progress) as bar:
            for chunk, images in zip(chunks, pool.map(_decode_chunk, chunks), strict=True):
                if start == 0:  # the first image fixes the size every other one must have
                    out = np.empty((len(paths), *images[0].shape), dtype=np.uint8)
                for path, img in zip(chunk, images, strict=True):
                    if img.shape != out.shape[1:]:
                        raise DataError(
                            f"{path}: image is {img.shape[1]}x{img.shape[0]} but {paths[0]} is "
                            f"{out.shape[2]}x{out.shape[1]}; all images must share one size"
                        )
                    out[start] = img
                    start += 1
                bar.update(len(chunk))
    finally:
        # after a bad file (or Ctrl-C), do not wait for thousands of queued images to decode
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _decode_chunk(paths: list[str]) -> list[np.ndarray]:
    from PIL import Image

    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                # convert() copies; skipping it for images already RGB saves ~10% on tiny JPEGs
                images.append(np.asarray(im if im.mode == "RGB" else im.convert("RGB")))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot decode image ({_one_line(e)})") from None
    return images


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="decoding images", unit="img", disable=not enabled)


def _carve_test(raw: RawImages, root: Path) -> RawImages:
    """No test/ folder: hold out a stratified 10% with a fixed seed, independent of split_seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(raw.train_y))
    try:
        train, test = train_test_split(
            idx, test_size=0.1, stratify=raw.train_y, random_state=HOLDOUT_SEED
        )
    except ValueError:  # a class with a single image cannot be stratified; split plainly
        try:
            train, test = train_test_split(idx, test_size=0.1, random_state=HOLDOUT_SEED)
        except ValueError:
            raise DataError(
                f"{root}: too few images ({len(idx)}) to hold out a test split; add test/<class>/"
            ) from None
    train, test = np.sort(train), np.sort(test)
    x, y = raw.train_x, raw.train_y
    return RawImages(x[train], y[train], x[test], y[test], raw.classes)


# ---------------------------------------------------------------------------- decode cache


def _cache_path(root: Path, name: str, files) -> Path:
    """Keyed on the tree's absolute path and a manifest of names, sizes and mtimes."""
    h = hashlib.sha1(f"{CACHE_VERSION}\0{root.resolve()}".encode())
    total_bytes, max_mtime = 0, 0
    for path, label, st in files:
        h.update(f"\0{path}\0{label}\0{st.st_size}".encode())
        total_bytes += st.st_size
        max_mtime = max(max_mtime, st.st_mtime_ns)
    h.update(f"\0{len(files)}\0{total_bytes}\0{max_mtime}".encode())
    cache_dir = Path(os.environ.get("SEARCH_CACHE_DIR") or Path.home() / ".cache" / "search")
    return cache_dir / f"{name}-{h.hexdigest()}.npz"


def _read_cache(path: Path) -> RawImages | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return RawImages(
                z["train_x"], z["train_y"], z["test_x"], z["test_y"], tuple(z["classes"].tolist())
            )
    except Exception:  # a damaged cache is only a lost shortcut: decode again
        return None


def _write_cache(path: Path, raw: RawImages) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # a file object, so np.savez does not append ".npz"
            np.savez(
                f,
                train_x=raw.train_x,
                train_y=raw.train_y,
                test_x=raw.test_x,
                test_y=raw.test_y,
                classes=np.array(raw.classes, dtype=str),
            )
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old state or the whole file
    except OSError as e:  # an unwritable cache slows the next load; it must not fail this one
        tmp.unlink(missing_ok=True)
        warnings.warn(f"cannot write decode cache {path}: {_one_line(e)}", stacklevel=3)
