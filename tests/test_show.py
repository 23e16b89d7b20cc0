"""`python -m search.show data`: writes a samples grid where the study's results go, or fails in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.artifacts.pictures import MIN_CELL, sample_grid
from search.data.datasets import clear_cache, load_dataset
from search.show import main
from search.tuning.study_file import load_study

ERROR_PREFIX = "python -m search.show: error: "


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "cache"))
    yield


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_data_on_digits_writes_samples_png_and_prints_its_path(capsys):
    """Rule: `show data --dataset digits` writes results/digits/samples.png, prints that path only,
    and the picture holds n enlarged 8x8 images."""
    rc, out, err = run(capsys, "data", "--dataset", "digits")
    assert rc == 0, err
    assert out == "results/digits/samples.png\n"
    path = Path(out.strip())
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        # the train split `show data --dataset` uses: val_fraction 0.1, split_seed 0
        expected = sample_grid(load_dataset("digits", device="cpu", val_fraction=0.1, split_seed=0), n=16)
        assert np.array_equal(np.asarray(im), np.asarray(expected))
    cells = expected.info["cells"]
    assert len(cells) == 16 and all(c.image[2] - c.image[0] >= MIN_CELL for c in cells)


def test_data_with_a_study_writes_under_the_study_name(capsys):
    """Rule: with --study the picture goes to RESULTS_DIR/<study>/samples.png; --n sets the cells."""
    rc, out, err = run(capsys, "data", "--study", "digits", "--n", "3", "--results-dir", "out")
    assert rc == 0, err
    assert out.strip() == str(Path("out/digits/samples.png"))
    spec = load_study("digits")
    data = load_dataset(
        spec.dataset, device="cpu", val_fraction=spec.val_fraction, split_seed=spec.split_seed
    )
    expected = sample_grid(data, n=3)
    assert len(expected.info["cells"]) == 3
    with Image.open("out/digits/samples.png") as im:
        assert np.array_equal(np.asarray(im), np.asarray(expected))


def test_data_out_and_seed(capsys):
    """Rule: --out picks the file; the same --seed gives the same picture, another seed another."""
    for name, seed in (("a.png", "0"), ("b.png", "0"), ("c.png", "5")):
        rc, out, err = run(capsys, "data", "--dataset", "digits", "--out", f"pics/{name}", "--seed", seed)
        assert rc == 0, err
        assert out.strip() == f"pics/{name}"

    def load(name):
        return np.asarray(Image.open(f"pics/{name}"))

    assert np.array_equal(load("a.png"), load("b.png"))
    assert not np.array_equal(load("a.png"), load("c.png"))
    assert not Path("results").exists()


def test_data_keeps_the_colours_of_an_image_folder(capsys, tmp_path):
    """Rule: RGB images come out in their own colours (no channel swap) through load and
    de-normalization; every cell shows one of the classes' colours."""
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "yellow": (255, 255, 0)}
    for name, rgb in colours.items():
        folder = tmp_path / "tree" / "train" / name
        folder.mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (12, 20), rgb).save(folder / f"{k}.png")
    clear_cache()
    try:
        rc, out, err = run(capsys, "data", "--dataset", "imagefolder", "--data-dir", "tree", "--n", "8")
        data = load_dataset("imagefolder", data_dir="tree", device="cpu", val_fraction=0.1, split_seed=0)
        cells = sample_grid(data, n=8).info["cells"]  # where the command's grid put each image
    finally:
        clear_cache()
    assert rc == 0, err
    arr = np.asarray(Image.open(out.strip()))
    assert len(cells) == 8
    seen = set()
    for k, c in enumerate(cells):
        left, top, right, bottom = c.image
        cell = arr[top + 4 : bottom - 4, left + 4 : right - 4].reshape(-1, 3)  # inside the frame
        assert (cell == cell[0]).all(), f"cell {k} is not one solid colour"
        seen.add(tuple(int(v) for v in cell[0]))
    assert seen <= set(colours.values()) and len(seen) > 1


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["pictures"],
        ["data", "--n", "0"],
        ["data", "--n", "-1"],
        ["data", "--n", "abc"],
        ["data", "--n", "100000"],
        ["data", "--seed", "-3"],
        ["data", "--study", "digits", "--dataset", "digits"],
        ["data", "--dataset", "mnist"],
        ["data", "--study", "no-such-study"],
        ["data", "--bogus"],
        ["data", "--dataset", "digits", "--out", "samples.txt"],
        ["data", "--dataset", "imagefolder", "--data-dir", "missing"],
        ["data", "--dataset", "digits", "--out", "a-file/samples.png"],
    ],
)
def test_bad_usage_exits_2_with_one_line(capsys, argv):
    """Rule: a usage error, of the command or of its subcommand, is one line on stderr, exit 2,
    and writes nothing."""
    Path("a-file").write_text("a file, so a-file/samples.png cannot be created")
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert err.startswith(ERROR_PREFIX) and err.endswith("\n") and err.count("\n") == 1, err
    assert not Path("results").exists()
