"""The pictures: the documented sizes, `render_image`, and a small cache of encoded images."""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import math
import random
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from simulator.config import MARKER_RE

ASPECT_RATIOS = (
    "auto", "1:1", "1:4", "1:8", "2:3", "3:2", "3:4", "4:1",
    "4:3", "4:5", "5:4", "8:1", "9:16", "16:9", "21:9",
)  # fmt: skip
SIZES_1K = {
    "1:1": (1024, 1024), "2:3": (848, 1264), "3:2": (1264, 848), "3:4": (896, 1200),
    "4:3": (1200, 896), "4:5": (928, 1152), "5:4": (1152, 928), "9:16": (768, 1376),
    "16:9": (1376, 768), "21:9": (1584, 672), "1:4": (512, 2048), "4:1": (2048, 512),
    "1:8": (384, 3072), "8:1": (3072, 384),
}  # fmt: skip
RESOLUTION_SCALE = {"1K": 1, "2K": 2, "4K": 4}
# The drawing is made at about this many pixels, then upscaled: a 4K image stays quick.
DRAW_PIXELS = 262_144
IMAGE_CACHE_BYTES = 256 * 1024 * 1024


def image_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """The documented (width, height) of an image; `auto` is 1:1 for text-to-image."""
    width, height = SIZES_1K["1:1" if aspect_ratio == "auto" else aspect_ratio]
    scale = RESOLUTION_SCALE[resolution]
    return width * scale, height * scale


class ImageCache:
    """A small LRU of encoded images, bounded in bytes, so repeated downloads cost nothing."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            if key in self._items or len(data) > self.max_bytes:
                return
            self._items[key] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


def _colour(hue: float, lightness: float, saturation: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hls_to_rgb(hue % 1.0, lightness, saturation)
    return round(red * 255), round(green * 255), round(blue * 255)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: no system font needed, scalable when FreeType is there.
    return ImageFont.load_default(size=size)


def _caption_lines(draw: ImageDraw.ImageDraw, text: str, font: Any, max_width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        elif len(lines) == 3:
            break
        else:
            lines.append(word)
    return lines


def render_image(
    prompt: str, width: int, height: int, output_format: str, *, variant: str = ""
) -> bytes:
    """A colourful picture of exactly width x height, derived from a hash of the prompt.

    The palette comes from the prompt alone and the shapes from the prompt and `variant` (the
    task and result index), so that, as with a real model, two runs of one prompt look related
    but are not the same picture.

    Drawn at about DRAW_PIXELS and upscaled with a cheap filter, then encoded with fast
    settings, so a 4K image takes a fraction of a second.
    """
    palette = random.Random(hashlib.sha256(prompt.encode()).digest())
    rng = random.Random(hashlib.sha256(f"{variant}\0{prompt}".encode()).digest())
    scale = max(1.0, math.sqrt(width * height / DRAW_PIXELS))
    w, h = max(1, round(width / scale)), max(1, round(height / scale))

    hue = palette.random()
    gradient = palette.choice(
        (
            Image.linear_gradient("L"),
            Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90),
            Image.radial_gradient("L"),
        )
    )
    canvas = ImageOps.colorize(
        gradient.resize((w, h)),
        _colour(hue, 0.75, 0.9),
        _colour(hue + palette.uniform(0.25, 0.6), 0.3, 0.85),
    )
    draw = ImageDraw.Draw(canvas, "RGBA")
    unit = min(w, h)
    # Long, narrow images get more shapes, so that their far ends are not bare.
    for _ in range(rng.randint(7, 12) + round(2 * max(w, h) / unit)):
        shape_hue = hue + palette.uniform(-0.2, 0.2) + rng.choice((0.0, 0.33, 0.5))
        fill = (*_colour(shape_hue, rng.uniform(0.4, 0.7), 0.9), rng.randint(120, 220))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = unit * rng.uniform(0.08, 0.35)
        shape = rng.choice(("circle", "square", "triangle", "ring"))
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "square":
            draw.rounded_rectangle((x - r, y - r, x + r, y + r), radius=r / 4, fill=fill)
        elif shape == "triangle":
            draw.regular_polygon((x, y, r), 3, rotation=rng.uniform(0, 120), fill=fill)
        else:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(2, round(r / 5)))

    text = "".join(ch for ch in MARKER_RE.sub(" ", prompt) if ch.isprintable())
    font_size = max(10, unit // 11)
    font = _font(font_size)
    lines = _caption_lines(draw, text, font, w * 0.84)
    if lines:
        line_height = round(font_size * 1.25)
        box_height = line_height * len(lines) + font_size
        top = round(h * 0.72 - box_height / 2)
        draw.rounded_rectangle(
            (w * 0.05, top, w * 0.95, top + box_height), radius=font_size / 2, fill=(0, 0, 0, 150)
        )
        for i, line in enumerate(lines):
            y = top + font_size / 2 + i * line_height
            draw.text((w * 0.08, y), line, font=font, fill=(255, 255, 255, 255))

    if (w, h) != (width, height):
        canvas = canvas.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if output_format == "jpg":
        canvas.save(buffer, "JPEG", quality=85)
    else:
        canvas.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
