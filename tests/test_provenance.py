"""Provenance in the downloaded file: the prompt, settings, task id, date and the app's name in
a PNG's iTXt chunks and a JPEG's EXIF, written on the way out while the stored original stays
byte for byte what the image service sent; the owner's preference; what share links carry."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime

import pytest
from django.urls import reverse
from PIL import Image as PILImage

from accounts.models import Preferences
from gallery.models import Image, ShareLink
from gallery.provenance import Provenance, with_provenance
from tests.factories import done_generation, image_bytes

PROMPT = "a secret recipe for banana bread, façon grand-mère 🍌"
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


@pytest.fixture
def png(alice) -> Image:
    return done_generation(alice, PROMPT, aspect_ratio="16:9").images.get()


@pytest.fixture
def jpeg(alice) -> Image:
    return done_generation(alice, PROMPT, output_format="jpg").images.get()


def body(response) -> bytes:
    assert response.status_code == 200
    data = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(data)
    return data


def download(client, image: Image) -> bytes:
    return body(client.get(reverse("gallery:image", args=[image.pk]) + "?download"))


def stored_sha256(image: Image) -> str:
    with image.file.open("rb") as fp:
        return hashlib.sha256(fp.read()).hexdigest()


def pixels(data: bytes) -> bytes:
    with PILImage.open(io.BytesIO(data)) as picture:
        return picture.tobytes()


def jpeg_comment(picture: PILImage.Image) -> dict:
    """The JSON in a JPEG's EXIF UserComment ("UNICODE" in the TIFF header's byte order)."""
    exif = picture.getexif()
    comment = exif.get_ifd(EXIF_IFD)[USER_COMMENT]
    assert comment[:8] == b"UNICODE\x00"
    return json.loads(comment[8:].decode("utf-16-le" if exif.endian == "<" else "utf-16-be"))


def test_it_writes_the_prompt_into_a_downloaded_png(client, alice, png):
    original = stored_sha256(png)
    client.force_login(alice)
    data = download(client, png)
    with PILImage.open(io.BytesIO(data)) as picture:
        text = picture.text
    assert text["Description"] == PROMPT
    assert text["Software"] == "Banana Gallery"
    assert text["parameters"].startswith(PROMPT + "\nModel: nano-banana-2-text-to-image")
    assert "Aspect ratio: 16:9, Resolution: 1K, Format: PNG" in text["parameters"]
    facts = json.loads(text["banana-gallery"])
    assert facts["prompt"] == PROMPT
    assert facts["task_id"] == png.generation.task_id
    assert datetime.fromisoformat(facts["created_at"]) == png.created_at
    assert datetime.fromisoformat(text["Creation Time"]) == png.created_at
    assert facts["settings"]["Size"] == f"{png.width}x{png.height}"
    # Added, not re-encoded: the same pixels, and the stored file is untouched.
    assert pixels(data) == pixels(png.file.open("rb").read())
    assert hashlib.sha256(data).hexdigest() != png.sha256
    assert stored_sha256(png) == original == png.sha256


def test_it_writes_the_prompt_into_a_downloaded_jpeg(client, alice, jpeg):
    original = stored_sha256(jpeg)
    client.force_login(alice)
    data = download(client, jpeg)
    with PILImage.open(io.BytesIO(data)) as picture:
        exif = picture.getexif()
        facts = jpeg_comment(picture)
        assert picture.format == "JPEG"
    # EXIF's ASCII type holds the UTF-8 bytes (Pillow hands them back as Latin-1).
    assert exif[0x010E].encode("latin-1").decode("utf-8") == PROMPT
    assert exif[0x0131] == "Banana Gallery"
    assert exif[0x0132] == jpeg.created_at.strftime("%Y:%m:%d %H:%M:%S")
    assert facts["prompt"] == PROMPT
    assert facts["task_id"] == jpeg.generation.task_id
    assert facts["settings"]["Format"] == "JPEG"
    # The entropy-coded data is copied as it is: the same decoded pixels, bit for bit.
    assert pixels(data) == pixels(jpeg.file.open("rb").read())
    assert stored_sha256(jpeg) == original == jpeg.sha256


def test_it_serves_the_original_untouched_when_the_owner_turned_it_off(client, alice, png, jpeg):
    client.force_login(alice)
    page = client.get(reverse("accounts:account")).content.decode()
    assert "Put the prompt and settings into downloaded files" in page
    assert 'id="id_file_provenance" checked>' in page
    response = client.post(reverse("accounts:preferences"), {})
    assert response.status_code == 302
    assert not Preferences.of(alice).file_provenance
    page = client.get(reverse("accounts:account")).content.decode()
    assert "Saved: downloads are the original files, with nothing added." in page
    assert 'id="id_file_provenance">' in page
    for image in (png, jpeg):
        assert hashlib.sha256(download(client, image)).hexdigest() == image.sha256

    client.post(reverse("accounts:preferences"), {"file_provenance": "on"})
    with PILImage.open(io.BytesIO(download(client, png))) as picture:
        assert picture.text["Description"] == PROMPT


def test_it_keeps_the_inline_image_as_stored(client, alice, png):
    """The viewer's and the page's image is the original (on S3, a presigned redirect): only a
    download is rewritten."""
    client.force_login(alice)
    data = b"".join(client.get(reverse("gallery:image", args=[png.pk])).streaming_content)
    assert hashlib.sha256(data).hexdigest() == png.sha256


def test_it_checks_ownership(client, bob, png):
    client.force_login(bob)
    response = client.get(reverse("gallery:image", args=[png.pk]) + "?download")
    assert response.status_code == 404


def share(client, image: Image, **data) -> ShareLink:
    client.post(reverse("gallery:share_create", args=[image.pk]), data)
    return ShareLink.objects.latest("id")


def test_it_puts_the_prompt_into_a_shared_file_only_when_the_link_shows_it(client, alice, png):
    client.force_login(alice)
    hidden = share(client, png)
    shown = share(client, png, show_prompt="on")
    client.logout()

    data = body(client.get(f"/s/{hidden.token}/image"))
    assert hashlib.sha256(data).hexdigest() == png.sha256
    assert b"secret" not in data and b"banana-gallery" not in data

    response = client.get(f"/s/{shown.token}/image")
    assert response["Content-Disposition"].startswith("inline;")
    assert "no-cache" in response["Cache-Control"]
    with PILImage.open(io.BytesIO(body(response))) as picture:
        text = picture.text
    assert text["Description"] == PROMPT
    facts = json.loads(text["banana-gallery"])
    assert facts["prompt"] == PROMPT
    assert "task_id" not in facts  # our reference at the image service is not the public's
    assert png.generation.task_id not in str(text)


def test_it_shares_the_original_when_the_owner_turned_it_off(client, alice, png):
    Preferences.objects.create(user=alice, file_provenance=False)
    client.force_login(alice)
    shown = share(client, png, show_prompt="on")
    client.logout()
    data = body(client.get(f"/s/{shown.token}/image"))
    assert hashlib.sha256(data).hexdigest() == png.sha256


ABOUT = Provenance(
    app="Banana Gallery",
    created_at=datetime(2026, 12, 3, 9, 30, tzinfo=UTC),
    prompt="🍌" * 20_000,  # the longest prompt, 80,000 bytes of UTF-8
    settings={"Aspect ratio": "1:1"},
    task_id="task_1",
)


def written(data: bytes, image_format: str, about: Provenance = ABOUT) -> bytes:
    stream = with_provenance(io.BytesIO(data), image_format, len(data), about)
    out = b"".join(stream.chunks)
    assert len(out) == stream.size
    return out


def test_it_fits_the_longest_prompt_into_one_exif_segment():
    """A JPEG segment holds at most 64 KB: the JSON goes without the prompt, and the
    description is cut at a character boundary; the file still opens."""
    data = written(image_bytes(64, 64, "JPEG"), "JPEG")
    with PILImage.open(io.BytesIO(data)) as picture:
        picture.load()
        description = picture.getexif()[0x010E].encode("latin-1").decode("utf-8")
        facts = jpeg_comment(picture)
    assert 15_000 < len(description) < 20_000 and set(description) == {"🍌"}
    assert "prompt" not in facts and facts["task_id"] == "task_1"
    with PILImage.open(io.BytesIO(written(image_bytes(64, 64, "PNG"), "PNG"))) as picture:
        assert picture.text["Description"] == ABOUT.prompt


def test_it_keeps_the_exif_already_in_a_jpeg():
    exif = PILImage.Exif()
    exif[0x010F] = "Some Camera"  # Make
    out = io.BytesIO()
    PILImage.linear_gradient("L").convert("RGB").save(out, "JPEG", exif=exif)
    data = written(out.getvalue(), "JPEG")
    assert data.count(b"Exif\x00\x00") == 1
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.getexif()[0x010F] == "Some Camera"
        assert jpeg_comment(picture)["task_id"] == "task_1"
