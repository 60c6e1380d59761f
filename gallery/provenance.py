"""Provenance written into a downloaded image file: PNG text chunks, JPEG EXIF.

The stored original stays as the image service sent it; these functions make the bytes of a
download from it, as a stream: a few small pieces of ours go in near the start of the file and
the rest is copied through as it is, a block at a time, so no pixel is decoded or re-encoded and
a large file never sits in memory. Django-free: bytes and file objects in, bytes out.

- PNG: iTXt chunks (UTF-8) right after IHDR, so before any IDAT: `Description` (the prompt),
  `Software`, `Creation Time` (keywords the PNG specification lists), `parameters` (the prompt
  and settings in the plain-text shape that Stable Diffusion front ends write and read) and
  `banana-gallery`, all of it as JSON.
- JPEG: one APP1 EXIF segment after SOI (and after a JFIF APP0, which must come first):
  ImageDescription (the prompt, UTF-8), Software, DateTime and DateTimeOriginal, and
  UserComment (the same JSON, as EXIF's "UNICODE"). EXIF already in the file is kept, with these
  tags set in it.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from PIL import Image as PILImage

BLOCK = 256 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_HEADER = b"Exif\x00\x00"
# A JPEG segment's length field counts itself: at most 65,535 bytes, 2 of them the field.
JPEG_SEGMENT_MAX = 65_533
# EXIF tags (CIPA DC-008).
IMAGE_DESCRIPTION = 0x010E
SOFTWARE = 0x0131
DATE_TIME = 0x0132
EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
USER_COMMENT = 0x9286
# Segments read before ours goes in: SOI's APPn segments only, each at most 64 KB.
JPEG_HEAD_SEGMENTS = 32


class UnknownLayout(ValueError):
    """The file does not start as a PNG or JPEG of its stated format."""


@dataclass(frozen=True)
class Provenance:
    """What a file says about where it came from. `prompt` and `settings` are empty when they
    are not to be told (a share link that hides the prompt carries neither)."""

    app: str
    created_at: datetime
    prompt: str = ""
    settings: dict[str, str] | None = None
    task_id: str = ""

    def as_json(self, *, with_prompt: bool = True) -> str:
        data: dict[str, object] = {"app": self.app, "created_at": self.created_at.isoformat()}
        if self.prompt and with_prompt:
            data["prompt"] = self.prompt
        if self.settings:
            data["settings"] = self.settings
        if self.task_id:
            data["task_id"] = self.task_id
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def parameters(self) -> str:
        """The prompt, then the settings on one line: "Aspect ratio: 16:9, Resolution: 1K"."""
        line = ", ".join(f"{key}: {value}" for key, value in (self.settings or {}).items())
        return "\n".join(part for part in (self.prompt, line) if part)


@dataclass(frozen=True)
class Download:
    """A file as it is downloaded: its size, known before the first byte, and its bytes."""

    size: int
    chunks: Iterator[bytes]


def _then(head: bytes, fp: BinaryIO) -> Iterator[bytes]:
    """`head`, then the rest of `fp` a block at a time; `fp` is closed at the end, or when the
    reader stops early (a client that went away)."""
    try:
        if head:
            yield head
        while block := fp.read(BLOCK):
            yield block
    finally:
        fp.close()


def untouched(fp: BinaryIO, size: int) -> Download:
    return Download(size, _then(b"", fp))


def with_provenance(fp: BinaryIO, image_format: str, size: int, about: Provenance) -> Download:
    """The file in `fp` (`size` bytes, at its start) with `about` written in."""
    if image_format == "PNG":
        return _png(fp, size, about)
    if image_format == "JPEG":
        return _jpeg(fp, size, about)
    raise UnknownLayout(f"No provenance for {image_format} files")


# PNG


def itxt_chunk(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk: keyword, no language, UTF-8 text."""
    data = keyword.encode("latin-1") + b"\x00\x00\x00" + b"\x00\x00" + text.encode("utf-8")
    body = b"iTXt" + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_chunks(about: Provenance) -> bytes:
    texts = {"Software": about.app, "Creation Time": about.created_at.isoformat()}
    if about.prompt:
        texts["Description"] = about.prompt
    if about.prompt or about.settings:
        texts["parameters"] = about.parameters()
    texts["banana-gallery"] = about.as_json()
    return b"".join(itxt_chunk(keyword, text) for keyword, text in texts.items())


def _png(fp: BinaryIO, size: int, about: Provenance) -> Download:
    # The signature and IHDR, always the first chunk and always 13 bytes of data.
    head = fp.read(8 + 8 + 13 + 4)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise UnknownLayout("Not a PNG file")
    ours = png_chunks(about)
    return Download(size + len(ours), _then(head + ours, fp))


# JPEG


def _exif_segment(about: Provenance, existing: bytes | None) -> bytes:
    exif = PILImage.Exif()
    if existing:
        exif.load(existing)
    else:
        exif.endian = "<"  # Intel order, as most cameras write it
    stamp = about.created_at.strftime("%Y:%m:%d %H:%M:%S")
    exif[SOFTWARE] = about.app
    exif[DATE_TIME] = stamp
    details = exif.get_ifd(EXIF_IFD)
    details[DATE_TIME_ORIGINAL] = stamp
    byte_order = "utf-16-le" if exif.endian == "<" else "utf-16-be"
    description = about.prompt.encode("utf-8")
    # The whole JSON when it fits beside the description; without the prompt (which the
    # description holds) when not; and a description cut short only past 60 KB or so.
    for comment in (about.as_json(), about.as_json(with_prompt=False)):
        details[USER_COMMENT] = b"UNICODE\x00" + comment.encode(byte_order)
        if description:
            exif[IMAGE_DESCRIPTION] = description
        data = exif.tobytes()
        if len(data) <= JPEG_SEGMENT_MAX:
            break
    while len(data) > JPEG_SEGMENT_MAX:
        cut = len(description) - (len(data) - JPEG_SEGMENT_MAX)
        description = description[:cut].decode("utf-8", "ignore").encode("utf-8")
        exif[IMAGE_DESCRIPTION] = description
        data = exif.tobytes()
    return b"\xff\xe1" + struct.pack(">H", len(data) + 2) + data


def _jpeg(fp: BinaryIO, size: int, about: Provenance) -> Download:
    if fp.read(2) != b"\xff\xd8":
        raise UnknownLayout("Not a JPEG file")
    segments: list[bytes] = []
    after = b""
    while len(segments) < JPEG_HEAD_SEGMENTS:
        marker = fp.read(4)
        if len(marker) < 4 or marker[0] != 0xFF or not 0xE0 <= marker[1] <= 0xEF:
            after = marker  # the first segment that is not APPn: copied on from here
            break
        (length,) = struct.unpack(">H", marker[2:])
        segments.append(marker + fp.read(length - 2))
    jfif = [s for s in segments[:1] if s[1] == 0xE0]
    rest = segments[len(jfif) :]
    existing = next((s[4:] for s in rest if s[1] == 0xE1 and s[4:10] == EXIF_HEADER), None)
    rest = [s for s in rest if s[4:] != existing] if existing else rest
    head = b"\xff\xd8" + b"".join(jfif) + _exif_segment(about, existing) + b"".join(rest) + after
    read = 2 + sum(len(s) for s in segments) + len(after)
    return Download(size - read + len(head), _then(head, fp))
