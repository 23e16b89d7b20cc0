"""search.outputs.pictures: grid geometry, where each image lands, colours, red marks, error order, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from search.data.datasets import load_dataset
from search.outputs.pictures import (
    BORDER,
    FRAME,
    GAP,
    MAX_CELL,
    MIN_CELL,
    RED,
    cell_box,
    error_caption,
    errors_grid,
    grid_layout,
    image_grid,
    most_confident_errors,
    prediction_caption,
    predictions_grid,
    sample_grid,
    write_prediction_figures,
)

# Ten colours no channel swap or grey conversion maps onto one another.
COLOURS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
    (255, 0, 255), (128, 0, 0), (0, 128, 0), (0, 0, 128), (255, 128, 0),
]  # fmt: skip


def solid(colours, h=8, w=8) -> torch.Tensor:
    """[N, 3, h, w] float images, image k filled with colours[k]."""
    rgb = torch.tensor(colours, dtype=torch.float32) / 255.0
    return rgb.view(-1, 3, 1, 1).expand(-1, 3, h, w).contiguous()


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


def crop(arr: np.ndarray, box) -> np.ndarray:
    left, top, right, bottom = box
    return arr[top:bottom, left:right]


def red_count(region: np.ndarray) -> int:
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 90) & (b < 90)).sum())


# ---------------------------------------------------------------------------- geometry


def test_picture_size_is_what_the_layout_says():
    """Rule: image_grid's picture is exactly grid_layout(...).size, and carries that layout."""
    captions = [f"class {k}" for k in range(10)]
    picture = image_grid(solid(COLOURS), captions, ncol=4)
    layout = grid_layout(10, (8, 8), captions, ncol=4)
    assert picture.size == layout.size
    assert picture.info["grid_layout"] == layout
    assert (layout.ncol, layout.nrow) == (4, 3)
    # from first principles: 8 px enlarged 12x to MIN_CELL, framed, GAP around and between
    assert (layout.img_w, layout.img_h) == (MIN_CELL, MIN_CELL) == (8 * 12, 8 * 12)
    cell_w = MIN_CELL + 2 * BORDER
    assert picture.width == 4 * cell_w + 5 * GAP
    assert picture.height == 3 * (cell_w + layout.caption_h) + 4 * GAP


def test_each_image_lands_in_its_own_cell_row_major():
    """Rule: image k fills exactly cell_box(k) (row-major, ncol per row), in a BORDER-px frame with
    GAP px of background outside it; cells past the last image stay background."""
    picture = image_grid(solid(COLOURS), [str(k) for k in range(10)], ncol=4)
    layout = picture.info["grid_layout"]
    arr = pixels(picture)
    cell_w, cell_h = MIN_CELL + 2 * BORDER, MIN_CELL + 2 * BORDER + layout.caption_h
    for k, colour in enumerate(COLOURS):
        rows, cols = np.nonzero((arr == colour).all(axis=2))  # where colour k actually is
        found = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert cell_box(k, layout) == found, f"image {k} is not where cell_box says"
        row, col = divmod(k, 4)
        left, top = GAP + col * (cell_w + GAP) + BORDER, GAP + row * (cell_h + GAP) + BORDER
        assert found == (left, top, left + MIN_CELL, top + MIN_CELL), f"image {k} is not in cell {k}"
        assert len(rows) == MIN_CELL * MIN_CELL, f"image {k} is not one solid block"
        for y, x in ((top - 1, left), (top, left - BORDER), (top + MIN_CELL, left), (top, left + MIN_CELL)):
            assert tuple(arr[y, x]) == FRAME, f"frame of cell {k} at {(x, y)}"
        assert tuple(arr[top, left - BORDER - 1]) == (255, 255, 255), f"gap left of cell {k}"
        assert tuple(arr[top - BORDER - 1, left]) == (255, 255, 255), f"gap above cell {k}"
    empty = arr[2 * (cell_h + GAP) :, 2 * (cell_w + GAP) :]  # where cells 10 and 11 would be
    assert (empty == 255).all(), "an empty cell is not background"


def test_orientation_and_channels_are_kept():
    """Rule: CHW -> HWC with no flip, transpose or channel swap: each source pixel becomes a block."""
    h, w = 4, 6  # not square, so a transpose would change the shape
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    picture = image_grid(chw, ["x"], scale=5)
    layout = picture.info["grid_layout"]
    assert (layout.img_w, layout.img_h) == (30, 20)
    expected = np.repeat(np.repeat(hwc, 5, axis=0), 5, axis=1)
    assert np.array_equal(crop(pixels(picture), layout.cell_box(0)), expected)
    # a lone image keeps its frame and the gap around it, where it would be in a bigger grid
    assert layout.cell_box(0)[:2] == (GAP + BORDER, GAP + BORDER)
    assert picture.width == 30 + 2 * BORDER + 2 * GAP


def test_cifar_sized_images_are_enlarged_into_crisp_blocks():
    """Rule: 32x32 RGB images are enlarged 3x to MIN_CELL px, each source pixel an exact 3x3 block."""
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    picture = image_grid(torch.from_numpy(hwc).permute(0, 3, 1, 2), ["a", "b", "c"])  # uint8 input
    layout = picture.info["grid_layout"]
    assert (layout.img_w, layout.img_h) == (MIN_CELL, MIN_CELL)
    for k in range(3):
        expected = np.repeat(np.repeat(hwc[k], 3, axis=0), 3, axis=1)
        assert np.array_equal(crop(pixels(picture), layout.cell_box(k)), expected), f"cell {k}"


def test_grayscale_digits_are_enlarged_with_nearest_and_shown_in_grey():
    """Rule: an 8x8 one-channel image is scaled by a whole factor to >= MIN_CELL px, every source
    pixel a crisp square, grey repeated to R = G = B."""
    gray = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    picture = image_grid(gray, ["0"])
    layout = picture.info["grid_layout"]
    assert layout.img_w >= MIN_CELL and layout.img_w % 8 == 0
    s = layout.img_w // 8
    cell = crop(pixels(picture), layout.cell_box(0))
    levels = (gray[0, 0].numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(cell[..., 0], np.kron(levels, np.ones((s, s), dtype=np.uint8)))
    assert (cell[..., 0] == cell[..., 1]).all() and (cell[..., 1] == cell[..., 2]).all()


def test_large_images_are_shrunk_to_max_cell():
    """Rule: an image wider than MAX_CELL is shrunk to MAX_CELL px wide, keeping its aspect."""
    picture = image_grid(solid(COLOURS[:2], h=300, w=600), ["a", "b"])
    layout = picture.info["grid_layout"]
    assert (layout.img_w, layout.img_h) == (MAX_CELL, MAX_CELL // 2)
    assert tuple(pixels(picture)[layout.cell_box(1)[1] + 5, layout.cell_box(1)[0] + 5]) == COLOURS[1]


def test_long_captions_wrap_into_a_taller_strip_not_past_the_cell():
    """Rule: a caption wider than its cell wraps onto more lines; the strip grows, no text spills."""
    short = grid_layout(2, (8, 8), ["cat", "dog"])
    long = grid_layout(2, (8, 8), ["automobile -> airplane (97%)", "dog"])
    assert long.caption_h > short.caption_h
    picture = image_grid(solid(COLOURS[:2]), ["automobile -> airplane (97%)", "x"], ncol=2)
    layout = picture.info["grid_layout"]
    arr = pixels(picture)
    gap_column = arr[:, layout.cell_rect(0)[2]]  # between cell 0 and cell 1
    assert (gap_column == 255).all(), "caption text drawn outside its cell"


def test_bad_inputs_are_rejected():
    """Rule: mismatched captions and unsupported channel counts are ValueErrors, not odd pictures."""
    with pytest.raises(ValueError, match="captions"):
        image_grid(solid(COLOURS[:2]), ["only one"])
    with pytest.raises(ValueError, match="marks"):
        image_grid(solid(COLOURS[:2]), ["a", "b"], marks=[RED])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(torch.zeros(1, 2, 8, 8), ["x"])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(torch.zeros(1, 4, 8, 8), ["x"])
    with pytest.raises(ValueError, match="class index"):
        predictions_grid(solid(COLOURS[:2]), [0, 5], [0, 1], ["a", "b"])


# ---------------------------------------------------------------------------- figures


def test_sample_grid_shows_training_images_of_the_split():
    """Rule: every cell of sample_grid is one de-normalized image of the requested split; the same
    seed draws the same images, another seed others."""
    data = load_dataset("digits", val_fraction=0.2)
    picture = sample_grid(data, n=6, seed=1)
    layout = picture.info["grid_layout"]
    s = layout.img_w // 8
    arr = pixels(picture)
    train = (data.denormalize(data.x_train)[:, 0].numpy() * 255).round().astype(np.uint8)
    for k in range(6):
        cell = crop(arr, layout.cell_box(k))[s // 2 :: s, s // 2 :: s, 0]  # one pixel per block
        assert cell.max() > 200 and cell.min() < 50, "digit not visible"
        assert (train == cell).all(axis=(1, 2)).any(), f"cell {k} is not a training image"
    assert np.array_equal(pixels(sample_grid(data, n=6, seed=1)), arr)
    assert not np.array_equal(pixels(sample_grid(data, n=6, seed=2)), arr)
    assert sample_grid(data, n=10_000).info["grid_layout"].n == len(data.x_train)


def test_wrong_predictions_get_red_caption_and_red_border():
    """Rule: a wrong prediction's cell has a red border and red caption text; a right one neither."""
    true = [0, 1, 2, 3, 4, 5]
    pred = [0, 2, 2, 0, 4, 4]  # cells 1, 3 and 5 wrong
    classes = [f"c{k}" for k in range(6)]
    picture = predictions_grid(solid(COLOURS[:6]), true, pred, classes)
    layout = picture.info["grid_layout"]
    arr = pixels(picture)
    for k in range(6):
        wrong = true[k] != pred[k]
        left, top, right, bottom = layout.cell_box(k)
        border = arr[(top + bottom) // 2, left - 1]
        assert tuple(border) == (RED if wrong else FRAME), f"border of cell {k}"
        caption = crop(arr, layout.caption_box(k))
        assert (red_count(caption) > 10) == wrong, f"caption colour of cell {k}"
        assert (caption.min(axis=2) < 128).any(), f"cell {k} has no caption text"
    # the title ("3 of 6 wrong") has its own strip: text above the grid, the grid's gap below it
    title_h = int(np.argmax((arr[:, GAP] != 255).any(axis=1))) - GAP  # cell 0's frame starts GAP below
    assert title_h == layout.title_h > 0
    assert (arr[:title_h].min(axis=2) < 128).any(), "no title text"
    assert (arr[title_h : title_h + GAP] == 255).all(), "title runs into the grid"


def test_captions_say_true_then_predicted():
    """Rule: predictions read "true / pred"; errors read "true -> pred (97%)"."""
    assert prediction_caption("cat", "dog") == "cat / dog"
    assert error_caption("cat", "dog", 0.968) == "cat -> dog (97%)"


def test_errors_grid_picks_the_most_confident_mistakes_in_order():
    """Rule: only mistakes, sorted by confidence descending (ties by index), at most n of them."""
    true = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    pred = [0, 1, 1, 0, 2, 0, 3, 1, 0, 4]  # wrong: 1, 3, 5, 7, 8
    conf = [0.99, 0.60, 0.98, 0.90, 0.97, 0.60, 0.50, 0.95, 0.70, 0.99]
    assert most_confident_errors(true, pred, conf, n=16) == [7, 3, 8, 1, 5]
    assert most_confident_errors(true, pred, conf, n=2) == [7, 3]
    classes = [str(k) for k in range(5)]
    picture = errors_grid(solid(COLOURS), true, pred, conf, classes, n=3)
    layout = picture.info["grid_layout"]
    assert layout.n == 3
    arr = pixels(picture)
    for k, i in enumerate([7, 3, 8]):
        left, top, right, bottom = layout.cell_box(k)
        assert tuple(arr[(top + bottom) // 2, (left + right) // 2]) == COLOURS[i]
        assert tuple(arr[top - 1, left]) == RED and red_count(crop(arr, layout.caption_box(k))) > 10


def test_errors_grid_without_mistakes_still_draws_a_picture():
    """Rule: a perfect model gets a picture that says so, not an exception or a missing file."""
    picture = errors_grid(solid(COLOURS[:3]), [0, 1, 2], [0, 1, 2], [0.9, 0.8, 0.7], ["a", "b", "c"])
    assert isinstance(picture, Image.Image) and "grid_layout" not in picture.info


def test_write_prediction_figures_writes_both_pngs(tmp_path):
    """Rule: predictions.png and errors.png are written into out_dir (created), paths returned."""
    out = tmp_path / "results" / "study"
    n = 40
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, n).tolist()
    pred = [t if k % 3 else (t + 1) % 10 for k, t in enumerate(true)]
    conf = rng.uniform(0.1, 1.0, n).tolist()
    images = torch.rand(n, 1, 8, 8)
    paths = write_prediction_figures(
        images=images, true=torch.tensor(true), pred=pred, confidence=conf,
        classes=[str(d) for d in range(10)], out_dir=out,
    )  # fmt: skip
    assert paths == {"predictions": out / "predictions.png", "errors": out / "errors.png"}
    for path in paths.values():
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.width > MIN_CELL
    with Image.open(paths["predictions"]) as im:
        expected = predictions_grid(images, true, pred, [str(d) for d in range(10)])
        assert im.size == expected.size and expected.info["grid_layout"].n == 32
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_pictures_module_never_prints(capsys, tmp_path):
    """Rule: library code returns pictures and paths; only command-line mains print."""
    write_prediction_figures(
        images=solid(COLOURS[:2]), true=[0, 1], pred=[1, 1], confidence=[0.5, 0.9],
        classes=["a", "b"], out_dir=tmp_path,
    )  # fmt: skip
    assert capsys.readouterr() == ("", "")
