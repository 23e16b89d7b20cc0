"""search.artifacts.pictures: where each image lands and in what colours, red marks, error order,
seeding, bad inputs, files."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from search.artifacts.pictures import (
    MAX_CELL,
    MIN_CELL,
    error_caption,
    errors_grid,
    image_grid,
    most_confident_errors,
    prediction_caption,
    predictions_grid,
    sample_grid,
    save_image,
    write_prediction_figures,
)
from search.data.datasets import load_dataset
from search.schema import ERRORS_PNG, PREDICTIONS_PNG

# Ten colours no channel swap or grey conversion maps onto one another.
COLOURS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
    (255, 0, 255), (128, 0, 0), (0, 128, 0), (0, 0, 128), (255, 128, 0),
]  # fmt: skip
NOT_RED = [(0, 160, 0), (0, 0, 200), (90, 90, 90), (0, 200, 200), (200, 200, 200), (60, 120, 180)]


def solid(colours, h=8, w=8) -> torch.Tensor:
    """[N, 3, h, w] float images, image k filled with colours[k]."""
    rgb = torch.tensor(colours, dtype=torch.float32) / 255.0
    return rgb.view(-1, 3, 1, 1).expand(-1, 3, h, w).contiguous()


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB")).astype(int)


def crop(arr: np.ndarray, box, margin: int = 0) -> np.ndarray:
    left, top, right, bottom = box
    return arr[top + margin : bottom - margin, left + margin : right - margin]


def block_centres(arr: np.ndarray, box, rows: int, cols: int) -> np.ndarray:
    """The pixel at the centre of each of rows x cols equal blocks of box: one per source pixel."""
    left, top, right, bottom = box
    ys = (top + (np.arange(rows) + 0.5) * (bottom - top) / rows).astype(int)
    xs = (left + (np.arange(cols) + 0.5) * (right - left) / cols).astype(int)
    return arr[ys][:, xs]


def is_red(region: np.ndarray) -> np.ndarray:
    r, g, b = (region[..., i] for i in range(3))
    return (r > 150) & (g < 90) & (b < 90)


def ring(arr: np.ndarray, box) -> np.ndarray:
    """The pixels along the edge of box (where a frame is drawn), corners left out."""
    left, top, right, bottom = box
    return np.concatenate([
        arr[top - 1 : top + 2, left + 8 : right - 8].reshape(-1, 3),
        arr[bottom - 2 : bottom + 1, left + 8 : right - 8].reshape(-1, 3),
        arr[top + 8 : bottom - 8, left - 1 : left + 2].reshape(-1, 3),
        arr[top + 8 : bottom - 8, right - 2 : right + 1].reshape(-1, 3),
    ])  # fmt: skip


def has_text(region: np.ndarray) -> bool:
    return bool((region.min(axis=2) < 128).sum() > 10)


# ---------------------------------------------------------------------------- where images land


def test_each_solid_image_appears_in_its_own_cell_row_major():
    """Rule: image k is drawn, in its own colour, inside info["cells"][k].image and nowhere else;
    cells run row-major, ncol a row; an 8x8 image is enlarged to at least MIN_CELL px."""
    picture = image_grid(solid(COLOURS), [f"class {k}" for k in range(10)], ncol=4)
    cells = picture.info["cells"]
    arr = pixels(picture)
    assert len(cells) == 10
    for k, colour in enumerate(COLOURS):
        left, top, right, bottom = box = cells[k].image
        assert right - left >= MIN_CELL and bottom - top >= MIN_CELL, f"cell {k} too small"
        assert (crop(arr, box, margin=4) == colour).all(), f"cell {k} is not image {k}'s colour"
        rows, cols = np.nonzero((arr == colour).all(axis=2))
        assert left <= cols.min() and cols.max() < right and top <= rows.min() and rows.max() < bottom
        if k % 4:  # same row as the previous cell, to its right
            assert top == cells[k - 1].image[1] and left > cells[k - 1].image[2]
        elif k:  # first of a new row: under the previous row, back at the left edge
            assert top > cells[k - 1].image[3] and left == cells[0].image[0]
    empty = arr[cells[7].image[3] + 2 :, cells[9].image[2] + 2 :]  # where cells 10 and 11 would be
    assert (empty == 255).all(), "the places after the last image are not blank"


def test_orientation_and_channels_are_kept():
    """Rule: CHW -> HWC with no flip, transpose or channel swap; each source pixel becomes a block."""
    h, w = 4, 6  # not square, so a transpose would change the shape
    hwc = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    picture = image_grid(chw, ["x"])
    left, top, right, bottom = box = picture.info["cells"][0].image
    assert abs((right - left) * h - (bottom - top) * w) <= w, "aspect ratio not kept"
    assert np.abs(block_centres(pixels(picture), box, h, w) - hwc).max() <= 1


def test_uint8_cifar_sized_images_are_enlarged_pixel_for_pixel():
    """Rule: 32x32 uint8 RGB images are enlarged by a whole factor; every source pixel shows as is."""
    hwc = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    picture = image_grid(torch.from_numpy(hwc).permute(0, 3, 1, 2), ["a", "b", "c"])
    arr = pixels(picture)
    for k, cell in enumerate(picture.info["cells"]):
        assert cell.image[2] - cell.image[0] >= MIN_CELL
        diff = np.abs(block_centres(arr, cell.image, 32, 32) - hwc[k])
        assert diff[1:-1, 1:-1].max() <= 1, f"cell {k}"  # the outermost blocks lie under the frame


def test_grayscale_digits_are_enlarged_crisp_and_grey():
    """Rule: an 8x8 one-channel image is shown in grey (R = G = B = its level), enlarged by a whole
    factor with nearest interpolation: every source pixel an evenly coloured square."""
    levels = np.arange(64).reshape(8, 8) * 4  # 0, 4, ..., 252: every pixel a different grey
    picture = image_grid(torch.from_numpy(levels / 255.0).float().view(1, 1, 8, 8), ["0"])
    left, top, right, bottom = box = picture.info["cells"][0].image
    assert right - left >= MIN_CELL and (right - left) % 8 == 0
    arr = pixels(picture)
    centres = block_centres(arr, box, 8, 8)
    assert np.abs(centres - levels[..., None]).max() <= 1, "not these greys, or not in place"
    s = (right - left) // 8
    for i in range(8):
        for j in range(8):  # a block's inside (its outermost pixel row aside) is one colour: no blur
            block = arr[top + i * s + 1 : top + (i + 1) * s - 1, left + j * s + 1 : left + (j + 1) * s - 1]
            if i in (0, 7) or j in (0, 7):  # the frame overlaps the outer blocks' edge
                block = block[2:-2, 2:-2]
            assert (block == block[0, 0]).all(), f"block {(i, j)} is smoothed"


def test_large_images_are_shrunk_to_max_cell():
    """Rule: an image longer than MAX_CELL px is shrunk to MAX_CELL, keeping its aspect."""
    picture = image_grid(solid(COLOURS[:2], h=300, w=600), ["a", "b"])
    left, top, right, bottom = box = picture.info["cells"][1].image
    assert abs(right - left - MAX_CELL) <= 1 and abs(bottom - top - MAX_CELL // 2) <= 1
    assert (crop(pixels(picture), box, margin=4) == COLOURS[1]).all()


def test_long_captions_wrap_above_their_own_image():
    """Rule: a caption wider than its cell wraps onto more lines and stays over its own image."""
    long = "automobile -> airplane (97%)"
    picture = image_grid(solid(NOT_RED[:2]), [long, "x"], ncol=2)
    (img0, cap0), (img1, cap1) = picture.info["cells"]
    short = image_grid(solid(NOT_RED[:2]), ["cat", "x"], ncol=2).info["cells"][0].caption
    assert cap0[3] - cap0[1] > 1.8 * (short[3] - short[1]), "a long caption is not wrapped"
    assert img0[0] - 2 <= cap0[0] and cap0[2] <= img0[2] + 2 and cap0[3] <= img0[1], "caption spills"
    arr = pixels(picture)
    assert has_text(crop(arr, cap0)) and has_text(crop(arr, cap1))
    between = arr[: img0[3], img0[2] + 2 : img1[0] - 2]  # the gap between the cells, frames aside
    assert (between == 255).all(), "caption text drawn outside its cell"


# ---------------------------------------------------------------------------- the three pictures


def test_sample_grid_shows_training_images_titled_and_seeded():
    """Rule: each cell of sample_grid is a distinct de-normalized image of the split, captioned;
    the same seed draws the same picture, another seed another; n past the split shows it all."""
    data = load_dataset("digits", device="cpu", val_fraction=0.015)  # 22 val images
    train = data.denormalize(data.x_train)[:, 0].numpy() * 255
    picture = sample_grid(data, n=6, seed=1)
    arr = pixels(picture)
    found = []
    for k, cell in enumerate(picture.info["cells"]):
        shown = block_centres(arr, cell.image, 8, 8)[..., 0]
        matches = np.nonzero((np.abs(train - shown) <= 2).all(axis=(1, 2)))[0]
        assert len(matches) >= 1, f"cell {k} is not a training image"
        found.append(int(matches[0]))
        assert has_text(crop(arr, cell.caption)), f"cell {k} has no caption"
    assert len(set(found)) == 6
    assert np.array_equal(pixels(sample_grid(data, n=6, seed=1)), arr)
    assert not np.array_equal(pixels(sample_grid(data, n=6, seed=2)), arr)
    val = data.denormalize(data.x_val)[:, 0].numpy() * 255
    whole = sample_grid(data, n=10_000, split="val")
    arr = pixels(whole)
    shown = [block_centres(arr, cell.image, 8, 8)[..., 0] for cell in whole.info["cells"]]
    assert len(shown) == len(val) < 30
    assert all((np.abs(val - s) <= 2).all(axis=(1, 2)).any() for s in shown)


def test_wrong_predictions_get_a_red_caption_and_a_red_frame():
    """Rule: a wrong prediction's cell has a red frame and red caption text; a right one neither."""
    true = [0, 1, 2, 3, 4, 5]
    pred = [0, 2, 2, 0, 4, 4]  # cells 1, 3 and 5 wrong
    picture = predictions_grid(solid(NOT_RED), true, pred, [f"c{k}" for k in range(6)])
    arr = pixels(picture)
    for k, cell in enumerate(picture.info["cells"]):
        wrong = true[k] != pred[k]
        frame = is_red(ring(arr, cell.image))
        assert (frame.mean() > 0.9) if wrong else not frame.any(), f"frame of cell {k}"
        caption = crop(arr, cell.caption)
        assert has_text(caption), f"cell {k} has no caption"
        assert (is_red(caption).sum() > 10) == wrong, f"caption colour of cell {k}"
    top = min(cell.caption[1] for cell in picture.info["cells"])
    assert has_text(arr[:top]), "no title above the grid"


def test_predictions_grid_is_a_seeded_sample_in_original_order():
    """Rule: predictions_grid shows n of the images, chosen by the seed, in their original order."""
    greys = torch.arange(40, dtype=torch.float32).mul(6 / 255).view(40, 1, 1, 1).expand(-1, 1, 8, 8)
    labels = [k % 3 for k in range(40)]

    def shown(seed):
        picture = predictions_grid(greys, labels, labels, ["a", "b", "c"], n=8, seed=seed)
        arr = pixels(picture)
        return [round(arr[(c.image[1] + c.image[3]) // 2, (c.image[0] + c.image[2]) // 2, 0] / 6)
                for c in picture.info["cells"]]  # fmt: skip

    first = shown(0)
    assert len(first) == len(set(first)) == 8 and first == sorted(first)
    assert shown(0) == first and shown(1) != first


def test_errors_grid_shows_the_most_confident_mistakes_in_order():
    """Rule: only mistakes, most confident first (ties by index), at most n of them, all in red."""
    true = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    pred = [0, 1, 1, 0, 2, 0, 3, 1, 0, 4]  # wrong: 1, 3, 5, 7, 8
    conf = [0.99, 0.60, 0.98, 0.90, 0.97, 0.60, 0.50, 0.95, 0.70, 0.99]
    assert most_confident_errors(true, pred, conf, n=16) == [7, 3, 8, 1, 5]
    assert most_confident_errors(true, pred, conf, n=2) == [7, 3]
    picture = errors_grid(solid(COLOURS), true, pred, conf, [str(k) for k in range(5)], n=3)
    cells = picture.info["cells"]
    arr = pixels(picture)
    assert len(cells) == 3
    for cell, i in zip(cells, [7, 3, 8], strict=True):
        assert (crop(arr, cell.image, margin=4) == COLOURS[i]).all()
        assert is_red(ring(arr, cell.image)).mean() > 0.9 and is_red(crop(arr, cell.caption)).sum() > 10


def test_errors_grid_without_mistakes_still_draws_a_picture_that_says_so():
    """Rule: a perfect model gets a picture with a message, not an exception or a missing file."""
    picture = errors_grid(solid(COLOURS[:3]), [0, 1, 2], [0, 1, 2], [0.9, 0.8, 0.7], ["a", "b", "c"])
    assert isinstance(picture, Image.Image) and "cells" not in picture.info
    assert has_text(pixels(picture))


def test_captions_say_true_then_predicted():
    """Rule: predictions read "true / pred"; errors read "true -> pred (97%)"."""
    assert prediction_caption("cat", "dog") == "cat / dog"
    assert error_caption("cat", "dog", 0.968) == "cat -> dog (97%)"


def test_bad_inputs_are_value_errors():
    """Rule: mismatched lengths, unsupported channel counts and bad labels are ValueErrors."""
    with pytest.raises(ValueError, match="captions"):
        image_grid(solid(COLOURS[:2]), ["only one"])
    with pytest.raises(ValueError, match="wrong"):
        image_grid(solid(COLOURS[:2]), ["a", "b"], wrong=[True])
    for bad in (torch.zeros(1, 2, 8, 8), torch.zeros(1, 4, 8, 8), torch.zeros(3, 8, 8)):
        with pytest.raises(ValueError, match="C = 1 or 3"):
            image_grid(bad, ["x"] * len(bad))
    with pytest.raises(ValueError, match="labels"):
        predictions_grid(solid(COLOURS[:2]), [0], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="class index"):
        predictions_grid(solid(COLOURS[:2]), [0, 5], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="confidences"):
        errors_grid(solid(COLOURS[:2]), [0, 1], [1, 0], [0.5], ["a", "b"])


# ---------------------------------------------------------------------------- files, threads, output


def test_write_prediction_figures_writes_both_pngs(tmp_path):
    """Rule: predictions.png and errors.png land in out_dir (created), real PNGs of the two grids."""
    out = tmp_path / "results" / "study"
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 40).tolist()
    pred = [t if k % 3 else (t + 1) % 10 for k, t in enumerate(true)]
    conf = rng.uniform(0.1, 1.0, 40).tolist()
    images, classes = torch.rand(40, 1, 8, 8), [str(d) for d in range(10)]
    paths = write_prediction_figures(images=images, true=torch.tensor(true), pred=pred, confidence=conf,
                                     classes=classes, out_dir=out)  # fmt: skip
    assert paths == {"predictions": out / PREDICTIONS_PNG, "errors": out / ERRORS_PNG}
    expected = {"predictions": predictions_grid(images, true, pred, classes),
                "errors": errors_grid(images, true, pred, conf, classes)}  # fmt: skip
    for name, path in paths.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert np.array_equal(pixels(im), pixels(expected[name])), name
    assert len(expected["predictions"].info["cells"]) == 32
    assert sorted(p.name for p in out.iterdir()) == sorted([PREDICTIONS_PNG, ERRORS_PNG]), "stray files"


def test_save_image_is_atomic_and_follows_the_suffix(tmp_path, monkeypatch):
    """Rule: the format follows the suffix (unknown: ValueError); a failed write leaves the old file
    whole and no temporary file behind."""
    picture = image_grid(solid(COLOURS[:1]), ["a"])
    with Image.open(save_image(picture, tmp_path / "a.jpg")) as im:
        assert im.format == "JPEG"
    with pytest.raises(ValueError, match="extension"):
        save_image(picture, tmp_path / "a.txt")
    path = save_image(picture, tmp_path / "a.png")
    before = path.read_bytes()

    def half_then_crash(self, fh, format=None, **params):
        fh.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_image(image_grid(solid(COLOURS[1:2]), ["b"]), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png"]


def test_grids_drawn_in_threads_match_grids_drawn_one_by_one():
    """Rule: no shared drawing state: grids drawn at once in threads are the ones drawn alone."""
    jobs = [(solid(COLOURS[k : k + 3]), [f"{k}", "b", "c"]) for k in range(4)]
    alone = [pixels(image_grid(*job)) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: pixels(image_grid(*job)), jobs))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_the_module_does_not_use_pyplot():
    """Rule: headless and thread-safe: importing and drawing never loads pyplot's global state."""
    code = (
        "import sys, torch; from search.artifacts.pictures import image_grid; "
        "image_grid(torch.rand(2, 3, 8, 8), ['a', 'b']); print('matplotlib.pyplot' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_pictures_module_never_prints(capsys, tmp_path):
    """Rule: library code returns pictures and paths; only command-line mains print."""
    write_prediction_figures(images=solid(COLOURS[:2]), true=[0, 1], pred=[1, 1], confidence=[0.5, 0.9],
                             classes=["a", "b"], out_dir=tmp_path)  # fmt: skip
    errors_grid(solid(COLOURS[:2]), [0, 1], [0, 1], [0.5, 0.9], ["a", "b"])
    sample_grid(load_dataset("digits", device="cpu"), n=2)
    assert capsys.readouterr() == ("", "")
