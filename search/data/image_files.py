"""Images read from files into uint8 arrays: CIFAR-10's pickles, an ImageFolder tree of JPEGs
or PNGs (decoded on threads), and the on-disk cache of a tree's decoded pixels.

Decoding 60,000 small JPEGs takes seconds and loading the cached .npz does not, so a tree is
decoded once per content (names, sizes, mtimes) and machine. `search.data.datasets` turns these arrays
into normalized tensors on the training device.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from search.errors import UserError, first_line
from search.files import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
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


def cache_dir() -> Path:
    """Where decoded pixels (and the bench's extracted archive) are kept."""
    return Path(os.environ.get("SEARCH_CACHE_DIR") or Path.home() / ".cache" / "search")


# ---------------------------------------------------------------------------- CIFAR-10 pickles


def read_cifar_pickles(folder: Path) -> RawImages:
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
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({first_line(e)})") from None


def _field(d: dict, key: str, path: Path):
    # Python 2 pickles give bytes keys under encoding="bytes"; files written by Python 3 give str.
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: not a CIFAR-10 batch (no {key!r} entry)")


def _bytes_to_str(s) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)


# ---------------------------------------------------------------------------- image trees


def load_tree(root: Path, name: str, *, progress: bool) -> RawImages:
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
            raise DataError(f"{path}: cannot decode image ({first_line(e)})") from None
    return images


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="decoding images", unit="img", disable=not enabled)


def _carve_test(raw: RawImages, root: Path) -> RawImages:
    """No test/ folder: hold out a stratified 10% with a fixed seed, independent of split_seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(raw.train_y))
    try:
        train, test = train_test_split(idx, test_size=0.1, stratify=raw.train_y, random_state=HOLDOUT_SEED)
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
    return cache_dir() / f"{name}-{h.hexdigest()}.npz"


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
    def write(fh: IO[bytes]) -> None:  # keywords spelled out: numpy's stub reads a ** dict as allow_pickle
        np.savez(
            fh,
            train_x=raw.train_x,
            train_y=raw.train_y,
            test_x=raw.test_x,
            test_y=raw.test_y,
            classes=np.array(raw.classes, dtype=str),
        )

    try:  # a file object, so np.savez does not append ".npz"; a concurrent reader sees all or nothing
        atomic_write(path, write)
    except OSError as e:  # an unwritable cache slows the next load; it must not fail this one
        warnings.warn(f"cannot write decode cache {path}: {first_line(e)}", stacklevel=3)
