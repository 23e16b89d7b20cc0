"""Captioned image grids for the people who read a study's results, drawn without matplotlib.

Three pictures: samples.png (training images with their class names, a look at the data before
searching) and, for the exported best model, predictions.png (a sample of test images captioned
"true / pred", wrong ones framed in red) and errors.png (its most confident mistakes).

torchvision's `make_grid` does the tiling; this module adds only what it lacks: a frame around
each image, a caption strip under it, a title, and scaling so every cell is readable. Each image
becomes one equal-sized tile (frame, image, empty caption strip) so that make_grid's geometry is
the whole layout; `GridLayout` restates it, so callers and tests can tell where image k landed.

Library code: functions return images and paths, and never print.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from search.data.datasets import Dataset

RGB = tuple[int, int, int]

MIN_CELL = 96  # px: an image narrower than this is enlarged (nearest) to at least this width
MAX_CELL = 256  # px: an image wider than this is shrunk to this width
GAP = 2  # px around and between tiles: make_grid's padding
BORDER = 3  # px frame around each image; red marks a wrong prediction
MAX_CAPTION_LINES = 3  # a longer caption is cut with an ellipsis

BACKGROUND: RGB = (255, 255, 255)  # a grey level: make_grid pads every channel with one value
FRAME: RGB = (224, 224, 224)  # light grey, so a white image still shows its edges
TEXT: RGB = (0, 0, 0)
RED: RGB = (214, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """make_grid's geometry below a title strip of title_h px (0: no title): n tiles, ncol a row
    (make_grid's `nrow`), each an img_w x img_h image in a `border` frame above a caption strip of
    caption_h px, `gap` px around and between tiles. Boxes are (left, top, right, bottom) in
    pixels, right/bottom exclusive."""

    n: int
    ncol: int
    nrow: int
    img_w: int
    img_h: int
    caption_h: int
    title_h: int
    font_size: int
    line_h: int
    gap: int = GAP
    border: int = BORDER

    @property
    def cell_w(self) -> int:
        return self.img_w + 2 * self.border

    @property
    def cell_h(self) -> int:
        return self.img_h + 2 * self.border + self.caption_h

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        width = self.ncol * (self.cell_w + self.gap) + self.gap
        return width, self.title_h + self.nrow * (self.cell_h + self.gap) + self.gap

    def cell_rect(self, index: int) -> tuple[int, int, int, int]:
        """The whole tile: frame, image and caption strip."""
        if not 0 <= index < self.n:
            raise IndexError(f"cell {index} out of range for {self.n} cells")
        row, col = divmod(index, self.ncol)
        left = self.gap + col * (self.cell_w + self.gap)
        top = self.title_h + self.gap + row * (self.cell_h + self.gap)
        return left, top, left + self.cell_w, top + self.cell_h

    def cell_box(self, index: int) -> tuple[int, int, int, int]:
        """The image's pixels, inside the frame."""
        left, top = (v + self.border for v in self.cell_rect(index)[:2])
        return left, top, left + self.img_w, top + self.img_h

    def caption_box(self, index: int) -> tuple[int, int, int, int]:
        left, _, right, bottom = self.cell_rect(index)
        return left, bottom - self.caption_h, right, bottom


def cell_box(index: int, layout: GridLayout) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of image `index`'s pixels in a grid drawn with `layout`."""
    return layout.cell_box(index)


def grid_layout(
    n: int, image_hw: tuple[int, int], captions: Sequence[str], *, ncol: int | None = None,
    scale: float | None = None, title: str | None = None,
) -> GridLayout:  # fmt: skip
    """The geometry `image_grid` uses for n images of size image_hw = (H, W) with these captions."""
    if n < 1:
        raise ValueError("a grid needs at least one image")
    h, w = image_hw
    if scale is None:  # a whole factor when enlarging, so each source pixel becomes an equal square
        scale = math.ceil(MIN_CELL / w) if w < MIN_CELL else min(1.0, MAX_CELL / w)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    ncol = min(8, n) if ncol is None else ncol
    if ncol < 1:
        raise ValueError(f"ncol must be at least 1, got {ncol}")
    ncol = min(ncol, n)
    img_w, img_h = max(1, round(w * scale)), max(1, round(h * scale))
    font_size = max(11, min(16, img_w // 8))
    font = _font(font_size)
    line_h = _line_height(font)
    # one strip height for the whole grid: make_grid needs tiles of one size
    lines = max((len(_wrap(c, font, img_w + 2 * BORDER - 4)) for c in captions), default=1)
    title_h = _line_height(_font(font_size + 2)) + 8 if title else 0
    return GridLayout(n=n, ncol=ncol, nrow=math.ceil(n / ncol), img_w=img_w, img_h=img_h,
                      caption_h=max(1, lines) * line_h + 6, title_h=title_h, font_size=font_size,
                      line_h=line_h)  # fmt: skip


def image_grid(
    images: torch.Tensor, captions: Sequence[str], *, ncol: int | None = None, scale: float | None = None,
    marks: Sequence[RGB | None] | None = None, title: str | None = None,
) -> Image.Image:  # fmt: skip
    """Tile images [N, C, H, W] (float in [0, 1], or uint8; C = 1 or 3) with a caption under each.

    Geometry: `grid_layout(N, (H, W), captions, ncol=, scale=, title=)`, also kept in the
    returned picture's `info["grid_layout"]`; image k's pixels fill exactly its `cell_box(k)`.
    `marks[k]` colours image k's frame and caption (None: the defaults, FRAME and TEXT).
    """
    x = torch.from_numpy(to_hwc_uint8(images)).permute(0, 3, 1, 2)
    n, _, h, w = x.shape
    if len(captions) != n:
        raise ValueError(f"{n} images but {len(captions)} captions")
    marks = [None] * n if marks is None else list(marks)
    if len(marks) != n:
        raise ValueError(f"{n} images but {len(marks)} marks")
    layout = grid_layout(n, (h, w), captions, ncol=ncol, scale=scale, title=title)
    b, img_h, img_w = layout.border, layout.img_h, layout.img_w
    if (img_h, img_w) != (h, w):
        # nearest-exact, not "nearest": torch's "nearest" can pick the wrong source pixel at a
        # block edge through float rounding; shrinking averages instead, so detail does not alias
        mode = "nearest-exact" if img_w >= w else "bilinear"
        x = F.interpolate(x, size=(img_h, img_w), mode=mode, antialias=mode == "bilinear")
    frames = torch.tensor([mark or FRAME for mark in marks], dtype=torch.uint8)
    tiles = torch.full((n, 3, layout.cell_h, layout.cell_w), BACKGROUND[0], dtype=torch.uint8)
    tiles[:, :, : img_h + 2 * b] = frames[:, :, None, None]
    tiles[:, :, b : b + img_h, b : b + img_w] = x
    grid = make_grid(tiles, nrow=layout.ncol, padding=layout.gap, pad_value=BACKGROUND[0])
    if n == 1:  # make_grid returns a lone tile without its padding
        grid = F.pad(grid, (layout.gap,) * 4, value=BACKGROUND[0])
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    canvas.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (0, layout.title_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((layout.gap + 2, 4), title, fill=TEXT, font=_font(layout.font_size + 2))
    font = _font(layout.font_size)
    for k in range(n):
        left, top, right, _ = layout.caption_box(k)
        for i, line in enumerate(_wrap(captions[k], font, right - left - 4)):
            x_text = left + (right - left - font.getlength(line)) / 2
            draw.text((round(x_text), top + 3 + i * layout.line_h), line, fill=marks[k] or TEXT, font=font)
    canvas.info["grid_layout"] = layout  # not written to files; for callers and tests
    return canvas


def to_hwc_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] float in [0, 1] (or uint8) -> uint8 [N, H, W, 3] (gray repeated to RGB)."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}")
    x = images.detach().to("cpu")
    if x.dtype != torch.uint8:
        x = torch.nan_to_num(x.float(), nan=0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return np.ascontiguousarray(x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy())  # no flip, no swap


def sample_grid(data: Dataset, *, n: int = 16, split: str = "train", seed: int = 0) -> Image.Image:
    """n images of one split, drawn at random (seeded), de-normalized, captioned with class names."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test, got {split!r}")
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(x) == 0:
        return message_image(f"{data.name}: the {split} split has no images")
    picked = torch.as_tensor(_sample_indices(len(x), n, seed), device=x.device)
    images = data.denormalize(x.index_select(0, picked))
    return image_grid(images, [data.classes[c] for c in y.index_select(0, picked).tolist()])


def predictions_grid(
    images: torch.Tensor, true: Sequence[int], pred: Sequence[int], classes: Sequence[str], *, n: int = 32,
    seed: int = 0,
) -> Image.Image:  # fmt: skip
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
    return image_grid(images[idx], captions, marks=[RED if w else None for w in wrong], title=title)


def prediction_caption(true: str, pred: str) -> str:
    return f"{true} / {pred}"


def error_caption(true: str, pred: str, confidence: float) -> str:
    return f"{true} -> {pred} ({confidence:.0%})"


def most_confident_errors(
    true: Sequence[int], pred: Sequence[int], confidence: Sequence[float], *, n: int = 16
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
    images: torch.Tensor, true: Sequence[int], pred: Sequence[int], confidence: Sequence[float],
    classes: Sequence[str], *, n: int = 16,
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
    return image_grid(images[idx], captions, marks=[RED] * len(idx), title=title)


def write_prediction_figures(
    *, images: torch.Tensor, true: Sequence[int], pred: Sequence[int], confidence: Sequence[float],
    classes: Sequence[str], out_dir: str | Path,
) -> dict[str, Path]:  # fmt: skip
    """Write predictions.png and errors.png into out_dir; {"predictions": path, "errors": path}.
    `images`: the de-normalized test images; `confidence`: the softmax probability of each `pred`."""
    figures = {
        "predictions": predictions_grid(images, true, pred, classes),
        "errors": errors_grid(images, true, pred, confidence, classes),
    }
    return {name: save_image(picture, Path(out_dir) / f"{name}.png") for name, picture in figures.items()}


def save_image(picture: Image.Image, path: str | Path) -> Path:
    """Write atomically (a reader never sees half a file); the format follows the suffix."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            picture.save(fh, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def message_image(text: str, *, width: int = 400) -> Image.Image:
    """A small picture that says why there is nothing to show (better than no file at all)."""
    font = _font(14)
    lines = _wrap(text, font, width - 16, max_lines=6)
    line_h = _line_height(font)
    canvas = Image.new("RGB", (width, len(lines) * line_h + 16), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((8, 8 + i * line_h), line, fill=TEXT, font=font)
    return canvas


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


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1), so sizes follow cells


def _line_height(font) -> int:
    return font.getbbox("Ag|(%")[3] + 2  # tall and deep glyphs, so lines never touch


def _wrap(text: str, font, width: int, max_lines: int = MAX_CAPTION_LINES) -> list[str]:
    """Greedy word wrap to `width` px; a word too long for a line, or a last line, gets cut."""
    lines: list[str] = []
    current = ""
    for word in text.split() or [""]:
        candidate = f"{current} {word}" if current else word
        if not current or font.getlength(candidate) <= width:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
    for i, line in enumerate(lines):
        if font.getlength(line) > width:
            while line and font.getlength(line + "...") > width:
                line = line[:-1]
            lines[i] = line + "..."
    return lines
