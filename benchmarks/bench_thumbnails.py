"""Benchmark making an image's two thumbnails, the step between "decoded" and "stored".

    .venv/bin/python benchmarks/bench_thumbnails.py

For simulator pictures of a 1K 1:1 PNG, a 1K 1:1 PNG with photographic noise (WebP works
harder on it), a 2K 9:16 PNG, a 4K 1:1 PNG and a 4K 8:1 PNG: the wall and CPU time of
`gallery.provider.make_thumbnails` at 320 and 640 px, as `store_image` calls it on a picture
that is already decoded (decoding is the guard's cost, paid either way), and the bytes made.
"""

from __future__ import annotations

import io
import time

from common import machine_line, percentile
from PIL import Image as PILImage

from gallery import provider
from simulator.images import render_image

HEIGHTS = (320, 640)
CASES = [
    ("1K 1:1", 1024, 1024, False, 30),
    ("1K 1:1 noisy", 1024, 1024, True, 30),
    ("2K 9:16", 1536, 2752, False, 10),
    ("4K 1:1", 4096, 4096, False, 5),
    ("4K 8:1", 12288, 1536, False, 5),
]


def picture(width: int, height: int, noisy: bool) -> PILImage.Image:
    data = render_image("a banana astronaut over a neon city", width, height, "png")
    decoded = PILImage.open(io.BytesIO(data))
    decoded.load()
    if noisy:
        noise = PILImage.effect_noise((width, height), 40).convert("RGB")
        decoded = PILImage.blend(decoded.convert("RGB"), noise, 0.35)
    return decoded


def main() -> None:
    print(machine_line())
    print(f"{'picture':14} {'wall p50':>9} {'wall p95':>9} {'CPU p50':>8}  bytes (320 px, 640 px)")
    for name, width, height, noisy, runs in CASES:
        source = picture(width, height, noisy)
        walls, cpus = [], []
        for _ in range(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            made = provider.make_thumbnails(source, HEIGHTS)
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        sizes = ", ".join(f"{len(data):,}" for data in made)
        print(
            f"{name:14} {percentile(walls, 50):6.0f} ms {percentile(walls, 95):6.0f} ms "
            f"{percentile(cpus, 50):5.0f} ms  {sizes}"
        )


if __name__ == "__main__":
    main()
