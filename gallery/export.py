"""A user's images as one zip, streamed as it is built, with a manifest.json of them all.

zipstream-ng writes the zip: pure Python without dependencies, files stored as they are (PNG
and JPEG are compressed already, so deflating them again would cost CPU for nothing) and
streamed without buffering, Zip64 only when the zip needs it. The images come from the
database in chunks of CHUNK by id, so the queries are one per chunk whatever the gallery's
size (and one more for a chunk with images in collections, for their names); each file is
read from storage a block at a time, with its provenance written in when its owner wants
that (gallery.provenance), and hashed on its way into the zip.

The manifest comes last, so that it can give every file's size and sha256 as they are in the
zip: each image's entry is written to a spooled temporary file (in memory up to 256 KB, on
disk beyond) once its file is in the zip, and copied into the zip at the end. Memory stays flat:
what grows with the gallery is that file and the zip's central directory (about 150 bytes an
image).
"""

from __future__ import annotations

import gc
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from typing import IO

from django.db.models import DecimalField, Exists, IntegerField, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce, Lower
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.text import slugify
from zipstream import ZipStream

from gallery.models import (
    PROVENANCE_APP,
    Collection,
    CollectionItem,
    Image,
    ImageQuerySet,
    Lease,
)
from ledger.models import LedgerEntry

CHUNK = 200
MANIFEST = "manifest.json"
MANIFEST_MEMORY = 256 * 1024
# One export at a time per user, held while it streams. A web process killed mid-export lets
# go within LEASE_SECONDS; a live one renews the hold every RENEW_SECONDS.
LEASE_SECONDS = 120.0
RENEW_SECONDS = 30.0


class ExportRunning(Exception):
    """The user's previous export is still streaming."""

    message = (
        "Your previous export is still being downloaded. Wait for it to finish, then try "
        "again (a download that was cancelled lets go within two minutes)."
    )


def file_name(image: Image) -> str:
    """The name in the zip: readable, sortable by day, and unique by the image's id, e.g.
    `2026-11-03_a-red-fox_123.png`."""
    generation = image.generation
    day = timezone.localdate(generation.created_at).isoformat()
    words = slugify(generation.prompt[:60])[:40].strip("-") or "image"
    return f"{day}_{words}_{image.pk}.{image.extension}"


def of_collection(collection: Collection) -> tuple[ImageQuerySet, str, dict]:
    """What a collection's export is made of: its images, the zip's file name (e.g.
    `banana-gallery-trips-2026-11-03.zip`) and what its manifest says about it."""
    images = Image.objects.filter(generation__in=collection.gallery())
    words = slugify(collection.name)[:40].strip("-") or f"collection-{collection.pk}"
    filename = f"banana-gallery-{words}-{timezone.localdate().isoformat()}.zip"
    return images, filename, {"collection": {"id": collection.pk, "name": collection.name}}


def _cost(field: str, output) -> Coalesce:
    """The sum of `field` over the ledger entries of the image's generation (one per try)."""
    entries = (
        LedgerEntry.objects.filter(generation=OuterRef("generation"))
        .order_by()
        .values("generation")
        .annotate(total=Sum(field))
        .values("total")
    )
    return Subquery(entries, output_field=output)


def _with_collection_names(chunk: list[Image]) -> list[Image]:
    """The chunk, each image with `collection_names`: those of the collections its generation
    is in, by name. One query for the chunk, and none for one whose images are in none."""
    ids = {image.generation_id for image in chunk if image.in_collection}
    names: dict[int, list[str]] = {}
    if ids:
        items = (
            CollectionItem.objects.filter(generation_id__in=ids)
            .order_by(Lower("collection__name"), "collection_id")
            .values_list("generation_id", "collection__name")
        )
        for generation_id, name in items:
            names.setdefault(generation_id, []).append(name)
    for image in chunk:
        image.collection_names = names.get(image.generation_id, [])
    return chunk


def _chunks(images: ImageQuerySet) -> Iterator[list[Image]]:
    """The images with their generations, costs and collections, CHUNK at a time, by id."""
    rows = (
        images.select_related("generation")
        .annotate(
            cost_credits=_cost("credits", IntegerField()),
            cost_money=_cost("money", DecimalField(max_digits=18, decimal_places=6)),
            cost_currency=Subquery(
                LedgerEntry.objects.filter(generation=OuterRef("generation"))
                .exclude(currency="")
                .values("currency")[:1]
            ),
            in_collection=Exists(CollectionItem.objects.filter(generation=OuterRef("generation"))),
        )
        .order_by("pk")
    )
    last = 0
    while chunk := list(rows.filter(pk__gt=last)[:CHUNK]):
        yield _with_collection_names(chunk)
        last = chunk[-1].pk
        # Each image and its FieldFile refer to each other, so a chunk done with is only
        # freed by a full collection, which Python runs rarely: without this, a big export
        # would hold every image it has written until then.
        del chunk
        gc.collect()


def manifest_entry(image: Image, name: str, size: int, sha256: str) -> dict:
    generation = image.generation
    cost = None
    if image.cost_credits is not None:
        money = image.cost_money
        cost = {
            "credits": image.cost_credits,
            "money": str(money) if money is not None else None,
            "currency": image.cost_currency or "",
        }
    return {
        "file": name,
        "bytes": size,
        "sha256": sha256,
        "original_bytes": image.bytes,
        "original_sha256": image.sha256,
        "image_id": image.pk,
        "generation_id": generation.pk,
        "index": image.index,
        "prompt": generation.prompt,
        "settings": {
            "aspect_ratio": generation.aspect_ratio,
            "resolution": generation.resolution,
            "output_format": generation.output_format,
        },
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "task_id": generation.task_id,
        "created_at": generation.created_at.isoformat(),
        "finished_at": generation.finished_at.isoformat() if generation.finished_at else None,
        "stored_at": image.created_at.isoformat(),
        "timings": generation.timings,
        "favorite": generation.is_favorite,
        "collections": image.collection_names,
        "cost": cost,
    }


def _hashed(chunks: Iterator[bytes], into: dict) -> Iterator[bytes]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        yield chunk
    into.update(size=size, sha256=digest.hexdigest())


def _copied(head: bytes, spool: IO[bytes], tail: bytes) -> Iterator[bytes]:
    yield head
    spool.seek(0)
    while block := spool.read(256 * 1024):
        yield block
    yield tail


def zip_chunks(images: ImageQuerySet, *, provenance: bool, about: dict) -> Iterator[bytes]:
    """The zip's bytes: every image (originals as stored, with their provenance written in
    when `provenance`), then manifest.json with `about` and an entry per image."""
    stream = ZipStream(sized=False)
    count = 0
    with tempfile.SpooledTemporaryFile(max_size=MANIFEST_MEMORY) as spool:
        for chunk in _chunks(images):
            for image in chunk:
                try:
                    download = image.download(image.provenance() if provenance else None)
                except OSError:
                    # Deleted since the chunk was read (its file goes once the delete commits).
                    continue
                name = file_name(image)
                seen: dict = {}
                stream.add(_hashed(download.chunks, seen), name, size=download.size)
                yield from stream.all_files()
                entry = manifest_entry(image, name, seen["size"], seen["sha256"])
                spool.write(b",\n" if count else b"\n")
                spool.write(json.dumps(entry, ensure_ascii=False).encode())
                count += 1
        # `about` as JSON, its closing brace left off for the images to follow.
        head = json.dumps({**about, "count": count}, ensure_ascii=False)[:-1]
        stream.add(_copied(f'{head}, "images": ['.encode(), spool, b"\n]}\n"), MANIFEST)
        yield from stream.finalize()


def _held(user_id: int, token: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks`, renewing the user's export lease as they go and releasing it at the end, or
    when the client goes away (Django closes the response, which closes this generator)."""
    name = f"export:{user_id}"
    renewed = time.monotonic()
    try:
        for chunk in chunks:
            if time.monotonic() - renewed > RENEW_SECONDS:
                Lease.renew(name, token, LEASE_SECONDS)
                renewed = time.monotonic()
            yield chunk
    finally:
        chunks.close()
        Lease.release(name, token, LEASE_SECONDS)


def zip_response(
    user, images: ImageQuerySet, *, filename: str, provenance: bool, about: dict | None = None
) -> StreamingHttpResponse:
    """The streamed zip of `images` (the user's own) as an attachment, `about` added to the
    manifest's. Raises ExportRunning while another export of the user's streams."""
    token = Lease.take(f"export:{user.pk}", LEASE_SECONDS)
    if token is None:
        raise ExportRunning
    about = {
        "app": PROVENANCE_APP,
        "exported_at": timezone.now().isoformat(),
        "user": user.get_username(),
        "provenance_in_files": provenance,
        **(about or {}),
    }
    chunks = _held(user.pk, token, zip_chunks(images, provenance=provenance, about=about))
    response = StreamingHttpResponse(chunks, content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response
