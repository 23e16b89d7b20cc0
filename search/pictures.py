"""Pictures of images and predictions: captioned grids drawn with Pillow (no matplotlib).

Tiling follows torchvision's `make_grid`: cells in row-major order, `ncol` per row, `gap` pixels
around and between them. Each cell is an image area, framed by a `border` (red marks a wrong
prediction), above a caption strip. Small images (the 8x8 digits) are enlarged by a whole factor
with NEAREST so every pixel stays a crisp square; large ones are shrunk. The geometry is a plain,
deterministic `GridLayout`, so callers and tests can tell where image k landed (`cell_box`).

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
from PIL import Image, ImageDraw, ImageFont

from search.data import Dataset

RGB = tuple[int, int, int]

MIN_CELL = 96  # px: an image narrower than this is enlarged (NEAREST) to at least this width
MAX_CELL = 256  # px: an image wider than this is shrunk to this width
GAP = 2  # px around and between cells, as make_grid's padding
BORDER = 3  # px frame around each image; coloured red for a wrong prediction
MAX_CAPTION_LINES = 3  # a longer caption is cut with an ellipsis

BACKGROUND: RGB = (255, 255, 255)
FRAME: RGB = (224, 224, 224)  # the border of an unmarked cell: light grey, so white images show edges
TEXT: RGB = (0, 0, 0)
RED: RGB = (214, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes, in pixels; (left, top, right, bottom) boxes, right/bottom exclusive."""

    n: int  # cells
    ncol: int
    nrow: int
    img_w: int  # the (scaled) image area of one cell
    img_h: int
    caption_h: int  # the caption strip under each image
    title_h: int  # the strip above the grid (0: no title)
    font_size: int
    line_h: int  # caption line height
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
        height = self.title_h + self.nrow * (self.cell_h + self.gap) + self.gap
        return width, height

    def cell_rect(self, index: int) -> tuple[int, int, int, int]:
        """The whole cell: border, image and caption."""
        if not 0 <= index < self.n:
            raise IndexError(f"cell {index} out of range for {self.n} cells")
        row, col = divmod(index, self.ncol)
        left = self.gap + col * (self.cell_w + self.gap)
        top = self.title_h + self.gap + row * (self.cell_h + self.gap)
        return left, top, left + self.cell_w, top + self.cell_h

    def cell_box(self, index: int) -> tuple[int, int, int, int]:
        """The image area of cell `index` (inside its border)."""
        left, top, _, _ = self.cell_rect(index)
        b = self.border
        return left + b, top + b, left + b + self.img_w, top + b + self.img_h

    def caption_box(self, index: int) -> tuple[int, int, int, int]:
        left, _, right, bottom = self.cell_rect(index)
        return left, bottom - self.caption_h, right, bottom


def cell_box(index: int, layout: GridLayout) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of image `index`'s pixels in a grid drawn with `layout`."""
    return layout.cell_box(index)


def default_scale(width: int) -> float:
    """Whole-number enlargement up to MIN_CELL px for small images; shrink to MAX_CELL for big ones."""
    if width < MIN_CELL:
        return float(math.ceil(MIN_CELL / width))
    if width > MAX_CELL:
        return MAX_CELL / width
    return 1.0


def grid_layout(
    n: int,
    image_hw: tuple[int, int],
    captions: Sequence[str],
    *,
    ncol: int | None = None,
    scale: float | None = None,
    title: str | None = None,
) -> GridLayout:
    """The geometry `image_grid` uses for n images of size image_hw = (H, W) with these captions."""
    if n < 1:
        raise ValueError("a grid needs at least one image")
    h, w = image_hw
    if scale is None:
        scale = default_scale(w)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    ncol = min(8, n) if ncol is None else ncol
    if ncol < 1:
        raise ValueError(f"ncol must be at least 1, got {ncol}")
    ncol = min(ncol, n)
    img_w, img_h = max(1, round(w * scale)), max(1, round(h * scale))
    font_size = _font_size(img_w)
    font = _font(font_size)
    line_h = _line_height(font)
    lines = max((len(_wrap(c, font, img_w + 2 * BORDER - 4)) for c in captions), default=1)
    caption_h = max(1, lines) * line_h + 6
    title_h = 0
    if title:
        title_h = _line_height(_font(font_size + 2)) + 8
    return GridLayout(
        n=n,
        ncol=ncol,
        nrow=math.ceil(n / ncol),
        img_w=img_w,
        img_h=img_h,
        caption_h=caption_h,
        title_h=title_h,
        font_size=font_size,
        line_h=line_h,
    )


def image_grid(
    images: torch.Tensor,
    captions: Sequence[str],
    *,
    ncol: int | None = None,
    scale: float | None = None,
    caption_colors: Sequence[RGB | None] | None = None,
    border_colors: Sequence[RGB | None] | None = None,
    title: str | None = None,
) -> Image.Image:
    """Tile images [N, C, H, W] (float in [0, 1], or uint8; C = 1 or 3) with a caption under each.

    Geometry: `grid_layout(N, (H, W), captions, ncol=, scale=, title=)`, also kept in the
    returned picture's `info["grid_layout"]`; image k's pixels fill exactly its `cell_box(k)`.
    None in `caption_colors` / `border_colors` means the default colour.
    """
    pixels = to_hwc_uint8(images)
    n, h, w, _ = pixels.shape
    if len(captions) != n:
        raise ValueError(f"{n} images but {len(captions)} captions")
    for name, colors in (("caption_colors", caption_colors), ("border_colors", border_colors)):
        if colors is not None and len(colors) != n:
            raise ValueError(f"{n} images but {len(colors)} {name}")
    layout = grid_layout(n, (h, w), captions, ncol=ncol, scale=scale, title=title)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    if title:
        title_font = _font(layout.font_size + 2)
        draw.text((layout.gap + 2, 4), title, fill=TEXT, font=title_font)
    resample = Image.Resampling.NEAREST if layout.img_w >= w else Image.Resampling.LANCZOS
    for k in range(n):
        tile = Image.fromarray(pixels[k])  # uint8 [H, W, 3]: RGB
        if tile.size != (layout.img_w, layout.img_h):
            tile = tile.resize((layout.img_w, layout.img_h), resample)
        frame = (border_colors[k] if border_colors else None) or FRAME
        left, top, right, bottom = layout.cell_rect(k)
        draw.rectangle((left, top, right - 1, top + layout.img_h + 2 * layout.border - 1), fill=frame)
        box = layout.cell_box(k)
        canvas.paste(tile, box[:2])
        color = (caption_colors[k] if caption_colors else None) or TEXT
        _draw_caption(draw, captions[k], layout.caption_box(k), font, layout.line_h, color)
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
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # CHW -> HWC: no flip, no swap


# ---------------------------------------------------------------------------- figures


def sample_grid(data: Dataset, *, n: int = 16, split: str = "train", seed: int = 0) -> Image.Image:
    """n images of one split, drawn at random (seeded), de-normalized, captioned with class names."""
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}  # fmt: skip
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
    x, y = splits[split]
    if len(x) == 0:
        return message_image(f"{data.name}: the {split} split has no images")
    idx = _sample_indices(len(x), n, seed)
    picked = torch.as_tensor(idx, device=x.device)
    images = data.denormalize(x.index_select(0, picked))
    labels = y.index_select(0, picked).tolist()
    captions = [data.classes[c] for c in labels]
    return image_grid(images, captions)


def predictions_grid(
    images: torch.Tensor,
    true: Sequence[int],
    pred: Sequence[int],
    classes: Sequence[str],
    *,
    n: int = 32,
    seed: int = 0,
) -> Image.Image:
    """n images (a seeded sample, in their original order) captioned "true / pred"; wrong in red.

    Sampled rather than the first n: an image-tree test split is ordered by class.
    """
    true, pred = _labels(true, len(images), classes, "true"), _labels(pred, len(images), classes, "pred")
    if len(images) == 0:
        return message_image("no images to show")
    idx = np.sort(_sample_indices(len(images), n, seed))
    wrong = [true[i] != pred[i] for i in idx]
    captions = [prediction_caption(classes[true[i]], classes[pred[i]]) for i in idx]
    marks = [RED if w else None for w in wrong]
    title = f"true / predicted: {sum(wrong)} of {len(idx)} wrong (red)"
    return image_grid(_select(images, idx), captions, caption_colors=marks, border_colors=marks, title=title)


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
    images: torch.Tensor,
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    classes: Sequence[str],
    *,
    n: int = 16,
) -> Image.Image:
    """The n most confident mistakes, most confident first, captioned "true -> pred (97%)"."""
    true, pred = _labels(true, len(images), classes, "true"), _labels(pred, len(images), classes, "pred")
    conf = [float(c) for c in _as_list(confidence)]
    if len(conf) != len(images):
        raise ValueError(f"{len(images)} images but {len(conf)} confidences")
    idx = most_confident_errors(true, pred, conf, n=n)
    if not idx:
        return message_image(f"no mistakes: all {len(images)} predictions are correct")
    captions = [error_caption(classes[true[i]], classes[pred[i]], conf[i]) for i in idx]
    n_wrong = sum(t != p for t, p in zip(true, pred, strict=True))
    title = f"most confident mistakes ({len(idx)} of {n_wrong}): true -> predicted (confidence)"
    marks = [RED] * len(idx)
    return image_grid(
        _select(images, np.asarray(idx)),
        captions,
        caption_colors=marks,
        border_colors=marks,
        title=title,
    )


def write_prediction_figures(
    *,
    images: torch.Tensor,
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    classes: Sequence[str],
    out_dir: str | Path,
) -> dict[str, Path]:
    """Write predictions.png and errors.png into out_dir; {"predictions": path, "errors": path}.

    `images` are the de-normalized test images (`data.denormalize(data.x_test)`), `confidence`
    the softmax probability of each predicted class.
    """
    out_dir = Path(out_dir)
    figures = {
        "predictions": predictions_grid(images, true, pred, classes),
        "errors": errors_grid(images, true, pred, confidence, classes),
    }
    paths = {}
    for name, picture in figures.items():
        paths[name] = save_image(picture, out_dir / f"{name}.png")
    return paths


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


# ---------------------------------------------------------------------------- helpers


def _sample_indices(total: int, n: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return np.random.default_rng(seed).choice(total, size=min(n, total), replace=False)


def _select(images: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    return images.index_select(0, torch.as_tensor(idx, dtype=torch.long, device=images.device))


def _as_list(values) -> list:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.tolist()
    return list(values)


def _labels(values, n: int, classes: Sequence[str], what: str) -> list[int]:
    labels = [int(v) for v in _as_list(values)]
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} {what} labels")
    bad = [v for v in labels if not 0 <= v < len(classes)]
    if bad:
        raise ValueError(f"{what} label {bad[0]} is not a class index (0..{len(classes) - 1})")
    return labels


def _font_size(cell_w: int) -> int:
    return max(11, min(16, cell_w // 8))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag|(%")
    return bottom + 2


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def _wrap(text: str, font, width: int, max_lines: int = MAX_CAPTION_LINES) -> list[str]:
    """Greedy word wrap to `width` px; a word too long for a line, or a last line, gets cut."""
    lines: list[str] = []
    current = ""
    for word in text.split() or [""]:
        candidate = f"{current} {word}" if current else word
        if not current or _text_width(font, candidate) <= width:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
    return [_fit(line, font, width) for line in lines]


def _fit(line: str, font, width: int) -> str:
    if _text_width(font, line) <= width:
        return line
    while line and _text_width(font, line + "...") > width:
        line = line[:-1]
    return line + "..."


def _draw_caption(draw: ImageDraw.ImageDraw, text: str, box, font, line_h: int, color: RGB) -> None:
    left, top, right, _ = box
    for i, line in enumerate(_wrap(text, font, right - left - 4)):
        x = left + (right - left - _text_width(font, line)) / 2
        draw.text((round(x), top + 3 + i * line_h), line, fill=color, font=font)
