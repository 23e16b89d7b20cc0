"""Captioned image grids, drawn with matplotlib, for the people who read a study's results.

Three pictures: samples.png (training images titled with their class names, a look at the data
before searching) and, for the exported best model, predictions.png (a seeded sample of test images
captioned "true / pred", wrong ones in bold red with a red frame) and errors.png (its most
confident mistakes, most confident first).

Each image is one matplotlib axes drawn with `imshow` (nearest interpolation; one channel in the
grey colour map, three as RGB) under its caption, on a `Figure` rendered by the Agg canvas itself:
no pyplot, so no global state and no display, and safe in threads. A small image is enlarged by a
whole factor to at least MIN_CELL px, so 8x8 digits stay crisp and readable. The returned PIL image
carries `info["cells"]`: each image's and caption's pixel box, as matplotlib placed them, so
callers and tests can find cell k.

Library code: functions return images and paths, and never print.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from search.data.datasets import Dataset
from search.files import atomic_write
from search.schema import ERRORS_PNG, PREDICTIONS_PNG

MIN_CELL = 96  # px: an image's longer side smaller than this is enlarged (whole factor) to at least this
MAX_CELL = 256  # px: an image's longer side larger than this is shrunk to this
MAX_COLUMNS = 8
DPI = 100
FONT_PT = 9
GAP = 10  # px around and between cells
MAX_CAPTION_LINES = 3
FRAME = "#bbbbbb"  # light grey, so a white image still shows its edges
RED = (214, 0, 0)

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right/bottom exclusive
Labels = Sequence[int] | np.ndarray | torch.Tensor  # class indices, one per image
Scores = Sequence[float] | np.ndarray | torch.Tensor  # a number per image


class Cell(NamedTuple):
    image: Box  # where the image's pixels are
    caption: Box  # where its caption's text is


def image_grid(
    images: torch.Tensor, captions: Sequence[str], *, wrong: Sequence[bool] | None = None,
    ncol: int | None = None, title: str | None = None,
) -> Image.Image:  # fmt: skip
    """Tile images [N, C, H, W] (floats in [0, 1], or uint8; C = 1 or 3), each under its caption,
    `ncol` a row; `wrong[k]` draws image k's caption in bold red and its frame red."""
    x = _to_nhwc(images)
    n, h, w, channels = x.shape
    if len(captions) != n:
        raise ValueError(f"{n} images but {len(captions)} captions")
    wrong = [False] * n if wrong is None else [bool(v) for v in wrong]
    if len(wrong) != n:
        raise ValueError(f"{n} images but {len(wrong)} wrong flags")
    if n == 0:
        return message_image("no images to show")
    side = max(h, w)
    scale = math.ceil(MIN_CELL / side) if side < MIN_CELL else min(1.0, MAX_CELL / side)
    cell_w, cell_h = w * scale, h * scale
    ncol = min(n, MAX_COLUMNS if ncol is None else ncol)
    if ncol < 1:
        raise ValueError(f"ncol must be at least 1, got {ncol}")
    nrow = math.ceil(n / ncol)
    font_px = FONT_PT * DPI / 72
    chars = max(6, int(cell_w / (0.62 * font_px)))  # about this many characters fit a cell's width
    texts = [textwrap.fill(c, chars, max_lines=MAX_CAPTION_LINES, placeholder="...") for c in captions]
    caption_h = max(t.count("\n") + 1 for t in texts) * 1.25 * font_px + 6
    title_h = 2 * font_px + 4 if title else 0
    fig_w = ncol * cell_w + (ncol + 1) * GAP
    fig_h = title_h + nrow * (cell_h + caption_h) + (nrow + 1) * GAP
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    grid = dict(left=GAP / fig_w, right=1 - GAP / fig_w, bottom=GAP / fig_h, wspace=GAP / cell_w,
                top=1 - (title_h + caption_h + GAP) / fig_h, hspace=(caption_h + GAP) / cell_h)  # fmt: skip
    axes = fig.subplots(nrow, ncol, squeeze=False, gridspec_kw=grid).ravel()
    gray = channels == 1
    smoothing = "nearest" if scale >= 1 else "antialiased"  # enlarge crisp; shrink without aliasing
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        ax.imshow(x[k, ..., 0] if gray else x[k], cmap="gray" if gray else None, vmin=0.0, vmax=1.0,
                  interpolation=smoothing)  # fmt: skip
        ax.set(xticks=[], yticks=[])
        colour = tuple(v / 255 for v in RED) if wrong[k] else FRAME
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3.0 if wrong[k] else 1.0)
        ax.set_title(texts[k], fontsize=FONT_PT, pad=4, color=colour if wrong[k] else "black",
                     fontweight="bold" if wrong[k] else "normal")  # fmt: skip
    if title:
        fig.suptitle(title, x=GAP / fig_w, y=1 - 4 / fig_h, ha="left", va="top", fontsize=FONT_PT + 1)
    picture = _render(canvas)
    renderer = canvas.get_renderer()
    picture.info["cells"] = [
        Cell(_box(ax.get_window_extent(renderer), picture.height),
             _box(ax.title.get_window_extent(renderer), picture.height))
        for ax in axes[:n]
    ]  # fmt: skip
    return picture


def message_image(text: str, *, width: int = 400) -> Image.Image:
    """A small picture that says why there is nothing to show (better than no file at all)."""
    lines = textwrap.wrap(text, 45) or [""]
    height = len(lines) * 1.4 * 11 / 72 * DPI + 20  # px: 11 pt lines and a margin
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    fig.text(0.03, 0.5, "\n".join(lines), fontsize=11, va="center", ha="left")
    return _render(FigureCanvasAgg(fig))


def sample_grid(data: Dataset, *, n: int = 16, split: str = "train", seed: int = 0) -> Image.Image:
    """n images of one split, drawn at random (seeded), de-normalized, titled with class names."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test, got {split!r}")
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(x) == 0:
        return message_image(f"{data.name}: the {split} split has no images")
    picked = torch.as_tensor(_sample_indices(len(x), n, seed), device=x.device)
    images = data.denormalize(x.index_select(0, picked))
    return image_grid(images, [data.classes[c] for c in y.index_select(0, picked).tolist()])


def predictions_grid(
    images: torch.Tensor, true: Labels, pred: Labels, classes: Sequence[str], *, n: int = 32, seed: int = 0
) -> Image.Image:
    """n images captioned "true / pred", wrong ones in red: a seeded sample, not the first n, since
    an image-tree test split is ordered by class; shown in their original order."""
    images = torch.as_tensor(images)
    true, pred = _labels(true, len(images), classes, "true"), _labels(pred, len(images), classes, "pred")
    if len(images) == 0:
        return message_image("no images to show")
    idx = np.sort(_sample_indices(len(images), n, seed))
    wrong = [true[i] != pred[i] for i in idx]
    captions = [prediction_caption(classes[true[i]], classes[pred[i]]) for i in idx]
    title = f"true / predicted: {sum(wrong)} of {len(idx)} wrong (red)"
    return image_grid(images[idx], captions, wrong=wrong, title=title)


def prediction_caption(true: str, pred: str) -> str:
    return f"{true} / {pred}"


def error_caption(true: str, pred: str, confidence: float) -> str:
    return f"{true} -> {pred} ({confidence:.0%})"


def most_confident_errors(
    true: Sequence[int], pred: Sequence[int], confidence: Scores, *, n: int = 16
) -> list[int]:
    """Indices of the mistakes (true != pred), most confident first (ties: lower index first)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    conf = [float(c) for c in _as_list(confidence)]
    if len(conf) != len(true):
        raise ValueError(f"{len(true)} labels but {len(conf)} confidences")
    mistakes = [i for i, (t, p) in enumerate(zip(true, pred, strict=True)) if t != p]
    mistakes.sort(key=lambda i: (-conf[i], i))
    return mistakes[:n]


def errors_grid(
    images: torch.Tensor, true: Labels, pred: Labels, confidence: Scores, classes: Sequence[str], *,
    n: int = 16,
) -> Image.Image:  # fmt: skip
    """The n most confident mistakes, most confident first, captioned "true -> pred (97%)"."""
    images = torch.as_tensor(images)
    true, pred = _labels(true, len(images), classes, "true"), _labels(pred, len(images), classes, "pred")
    idx = most_confident_errors(true, pred, confidence, n=n)  # also checks the confidences' length
    conf = [float(c) for c in _as_list(confidence)]
    if not idx:
        return message_image(f"no mistakes: all {len(images)} predictions are correct")
    captions = [error_caption(classes[true[i]], classes[pred[i]], conf[i]) for i in idx]
    n_wrong = sum(t != p for t, p in zip(true, pred, strict=True))
    title = f"most confident mistakes ({len(idx)} of {n_wrong}): true -> predicted (confidence)"
    return image_grid(images[idx], captions, wrong=[True] * len(idx), title=title)


def write_prediction_figures(
    *, images: torch.Tensor, true: Labels, pred: Labels, confidence: Scores, classes: Sequence[str],
    out_dir: str | Path,
) -> dict[str, Path]:  # fmt: skip
    """Write predictions.png and errors.png into out_dir; {"predictions": path, "errors": path}.
    `images`: the de-normalized test images; `confidence`: the softmax probability of each `pred`."""
    out_dir = Path(out_dir)
    return {
        "predictions": save_image(predictions_grid(images, true, pred, classes), out_dir / PREDICTIONS_PNG),
        "errors": save_image(errors_grid(images, true, pred, confidence, classes), out_dir / ERRORS_PNG),
    }


def save_image(picture: Image.Image, path: str | Path) -> Path:
    """Write atomically (a reader never sees half a file); the format follows the suffix."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r}")
    return atomic_write(path, lambda fh: picture.save(fh, format=fmt))


def _to_nhwc(images) -> np.ndarray:
    """[N, C, H, W] floats in [0, 1] (or uint8) -> float32 [N, H, W, C] in [0, 1], no flip or swap."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C = 1 or 3, got {tuple(x.shape)}")
    x = x.detach().to("cpu")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else torch.nan_to_num(x.float(), nan=0.0).clamp(0.0, 1.0)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def _render(canvas: FigureCanvasAgg) -> Image.Image:
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def _box(bbox, height: int) -> Box:
    """A matplotlib display box (origin bottom left) -> pixel box (origin top left)."""
    return (round(bbox.x0), round(height - bbox.y1), round(bbox.x1), round(height - bbox.y0))


def _sample_indices(total: int, n: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return np.random.default_rng(seed).choice(total, size=min(n, total), replace=False)


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)


def _labels(values, n: int, classes: Sequence[str], what: str) -> list[int]:
    labels = [int(v) for v in _as_list(values)]
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} {what} labels")
    bad = [v for v in labels if not 0 <= v < len(classes)]
    if bad:
        raise ValueError(f"{what} label {bad[0]} is not a class index (0..{len(classes) - 1})")
    return labels
