"""Rows and files as the pipeline leaves them, made directly, for tests that are not about it.

A finished generation made through the real pipeline costs a simulator, a queue and several
HTTP round trips; these write the same rows and a small real image straight to storage.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from datetime import timedelta

from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image as PILImage

from gallery.models import Generation, Image
from ledger.models import LedgerEntry

# The longer side of a factory image: small enough to be cheap, big enough to be a real picture
# with a small thumbnail smaller than itself.
LONG_SIDE = 384
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG"}


def make_generation(
    owner, prompt: str = "a banana on the moon", status: str = "done", **fields
) -> Generation:
    """A generation row in any state, with no provider task behind it."""
    return Generation.objects.create(owner=owner, prompt=prompt, status=status, **fields)


def image_size(aspect_ratio: str) -> tuple[int, int]:
    """A small width and height in the generation's aspect ratio ("auto" is square)."""
    across, down = (int(n) for n in aspect_ratio.split(":")) if ":" in aspect_ratio else (1, 1)
    scale = LONG_SIDE / max(across, down)
    return round(across * scale), round(down * scale)


def image_bytes(width: int, height: int, format: str = "PNG") -> bytes:
    """A real image file of that size and format, with something in it besides one colour."""
    picture = PILImage.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    picture.save(out, format)
    return out.getvalue()


def make_image(
    generation: Generation,
    width: int = LONG_SIDE,
    height: int = LONG_SIDE,
    format: str = "PNG",
    index: int | None = None,
) -> Image:
    """A stored image of the generation: the file and its two WebP thumbnails (made as the
    pipeline makes them) in default_storage, and an Image row whose bytes, sha256, width and
    height describe that file."""
    data = image_bytes(width, height, format)
    if index is None:
        index = generation.images.count()
    image = Image(
        generation=generation,
        index=index,
        width=width,
        height=height,
        bytes=len(data),
        format=format,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    image.file.save(f"original.{image.extension}", ContentFile(data), save=False)
    with PILImage.open(io.BytesIO(data)) as picture:
        image.make_thumbnails(picture)
    image.save()
    return image


def done_generation(
    owner,
    prompt: str = "a banana on the moon",
    images: int = 1,
    aspect_ratio: str = "auto",
    resolution: str = "1K",
    output_format: str = "png",
    **fields,
) -> Generation:
    """A generation that finished as the pipeline finishes one, with `images` stored images.

    It was asked for 10 s ago, rendered for 6 s at the provider and was saved 1 s later, so its
    timings are 10 s in all, 6 s rendering and 4 s waiting; `fields` override any of it.
    """
    created = timezone.now() - timedelta(seconds=10)
    task_id = f"task_factory_{uuid.uuid4().hex[:12]}"
    values = {
        "status": Generation.Status.DONE,
        "aspect_ratio": aspect_ratio,
        "resolution": resolution,
        "output_format": output_format,
        "task_id": task_id,
        "provider_state": "success",
        # Where nothing listens: a test that tries to download these again fails loudly.
        "result_urls": [f"http://127.0.0.1:9/{task_id}/{i}.{output_format}" for i in range(images)],
        "created_at": created,
        "submitted_at": created + timedelta(seconds=1),
        "provider_created_at": created + timedelta(seconds=1),
        "provider_completed_at": created + timedelta(seconds=9),
        "cost_time_ms": 6000,
        "finished_at": created + timedelta(seconds=10),
        "poll_count": 4,
        **fields,
    }
    values.setdefault("queued_at", values["created_at"])
    generation = make_generation(owner, prompt, **values)
    width, height = image_size(generation.aspect_ratio)
    for index in range(images):
        make_image(generation, width, height, PIL_FORMATS[generation.output_format], index)
    return generation


def make_entry(
    user,
    accepted_at,
    credits: int = 1,
    outcome: str = LedgerEntry.Outcome.DONE,
    generation: Generation | None = None,
    **fields,
) -> LedgerEntry:
    """A ledger entry as the pipeline leaves one, for a generation (a new one unless given)
    of `user`; settled `outcome` a minute after `accepted_at` unless still pending."""
    if generation is None:
        status = {"done": "done", "pending": "waiting"}.get(outcome, "failed")
        generation = make_generation(user, status=status)
    values = {
        "user": user,
        "generation": generation,
        "generation_pk": generation.pk,
        "task_id": f"task_factory_{uuid.uuid4().hex[:12]}",
        "resolution": "1K",
        "credits": credits,
        "accepted_at": accepted_at,
        "outcome": outcome,
        "outcome_at": None if outcome == "pending" else accepted_at + timedelta(minutes=1),
        **fields,
    }
    return LedgerEntry.objects.create(**values)


def many_done_images(owner, count: int, side: int = 64, image_format: str = "PNG") -> list[Image]:
    """`count` finished generations of one stored image each, made in bulk, for what scales
    with a gallery's size (an export). Each file is `side` px of random noise, so no two are
    alike; there are no thumbnails, which would take minutes to make for thousands."""
    now = timezone.now()
    generations = Generation.objects.bulk_create(
        Generation(
            owner=owner,
            prompt=f"a banana, number {i}, drawn as {['ink', 'oil', 'chalk'][i % 3]}",
            status=Generation.Status.DONE,
            output_format={"PNG": "png", "JPEG": "jpg"}[image_format],
            task_id=f"task_many_{uuid.uuid4().hex[:12]}",
            created_at=now - timedelta(minutes=count - i),
            queued_at=now - timedelta(minutes=count - i),
            finished_at=now - timedelta(minutes=count - i, seconds=-10),
            cost_time_ms=6000,
        )
        for i in range(count)
    )
    images = []
    for generation in generations:
        out = io.BytesIO()
        noise = PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        noise.save(out, image_format)
        data = out.getvalue()
        image = Image(
            generation=generation,
            width=side,
            height=side,
            bytes=len(data),
            format=image_format,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        image.file.save(f"original.{image.extension}", ContentFile(data), save=False)
        images.append(image)
    return Image.objects.bulk_create(images)
