"""A grid of the training images a study's trials train on: the library behind `python -m search.show`.

The images are the study's train split (its val_fraction and split_seed), de-normalized back to
pixels, each captioned with its class name: a look at the data before searching.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from search.artifacts.pictures import sample_grid, save_image
from search.data.datasets import load_dataset
from search.errors import UserError
from search.schema import SAMPLES_PNG as SAMPLES
from search.schema import study_dir
from search.tuning.study_file import load_study

MAX_N = 1024  # more cells than this is a poster, not a preview
DEFAULT_STUDY = "cifar10"  # as in search.run


def write_samples(
    *,
    study: str | None,
    dataset: str | None,
    data_dir: str | None,
    n: int,
    seed: int,
    results_dir: str | Path,
    out: str | Path | None,
) -> Path:
    """Write `n` captioned training images of a study (or of a dataset's default split)."""
    if n > MAX_N:
        raise UserError(f"argument --n: {n} is too many; at most {MAX_N}")
    if dataset is not None:
        name, val_fraction, split_seed = dataset, 0.1, 0
    else:
        spec = load_study(study or DEFAULT_STUDY)
        name, dataset = spec.name, spec.dataset
        val_fraction, split_seed = spec.val_fraction, spec.split_seed
    if dataset == "table":
        raise UserError("show data draws images; a table study's pictures come with its export")
    path = Path(out) if out else study_dir(results_dir, name) / SAMPLES
    if path.is_dir():
        path = path / SAMPLES
    if path.suffix.lower() not in Image.registered_extensions():
        raise UserError(f"--out {path}: unknown image file extension; use .png")
    data = load_dataset(
        dataset, data_dir=data_dir, device="cpu", val_fraction=val_fraction,
        split_seed=split_seed, progress=True,
    )  # fmt: skip
    picture = sample_grid(data, n=n, split="train", seed=seed)
    try:
        return save_image(picture, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
