"""Thumbnails: two WebP sizes in the image's own shape, and the command that remakes them."""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from PIL import Image as PILImage

from gallery import provider, tasks
from gallery.models import Image
from tests.factories import done_generation, image_bytes, make_generation, make_image


def thumbnail_size(field) -> tuple[int, int]:
    with field.open("rb") as fp, PILImage.open(fp) as picture:
        assert picture.format == "WEBP"
        return picture.size


def stored(owner, aspect_ratio: str) -> Image:
    """An image stored as the pipeline stores a result of the documented 1K size."""
    generation = make_generation(owner, status="downloading", aspect_ratio=aspect_ratio)
    width, height = provider.documented_size(aspect_ratio, "1K")
    return tasks.store_image(generation, 0, io.BytesIO(image_bytes(width, height)))


@pytest.mark.parametrize(
    ("aspect_ratio", "small_height", "large_height"),
    [
        ("1:1", 320, 640),
        ("9:16", 320, 640),
        # 3072x384: as tall as the large one would be, but 8:1 is capped at 4 times the
        # target height in width, so both come out half as tall.
        ("8:1", 160, 320),
    ],
)
def test_it_keeps_the_ratio_at_the_row_heights(alice, aspect_ratio, small_height, large_height):
    image = stored(alice, aspect_ratio)
    small = thumbnail_size(image.thumbnail)
    large = thumbnail_size(image.thumbnail_large)
    assert (small[1], large[1]) == (small_height, large_height)
    for (width, height), target in [(small, 320), (large, 640)]:
        assert width / height == pytest.approx(image.width / image.height, rel=0.02)
        assert width <= 4 * target


def test_it_never_makes_a_thumbnail_bigger_than_the_image(alice):
    picture = PILImage.open(io.BytesIO(image_bytes(300, 200)))
    small, large = provider.make_thumbnails(picture, (320, 640))
    assert PILImage.open(io.BytesIO(small)).size == (300, 200)
    assert PILImage.open(io.BytesIO(large)).size == (300, 200)


def test_it_reads_the_heights_from_settings(alice, settings):
    settings.THUMBNAIL_HEIGHT = 100
    image = stored(alice, "1:1")
    assert thumbnail_size(image.thumbnail) == (100, 100)
    assert thumbnail_size(image.thumbnail_large) == (200, 200)


def square_thumbnail_of_old(image: Image) -> None:
    """Make `image` look as images stored before the upgrade do: one square-fitted thumbnail."""
    default_storage.delete(image.thumbnail_large.name)
    picture = PILImage.open(image.file.open("rb")).convert("RGB")
    picture.thumbnail((512, 512))
    out = io.BytesIO()
    picture.save(out, "WEBP")
    with default_storage.open(image.thumbnail.name, "wb") as fp:
        fp.write(out.getvalue())
    Image.objects.filter(pk=image.pk).update(thumbnail_large="")


def rebuild(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("rebuild_thumbnails", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_rebuilds_the_thumbnails_that_are_missing(alice, django_capture_on_commit_callbacks):
    first, second, done = done_generation(alice, aspect_ratio="9:16", images=3).images.all()
    square_thumbnail_of_old(first)
    square_thumbnail_of_old(second)
    with django_capture_on_commit_callbacks(execute=True):
        out, err = rebuild("--batch-size", "1")
    assert "Thumbnails made for 2 images; 1 already had them;" in out
    assert not err

    for old in (first, second):
        rebuilt = Image.objects.get(pk=old.pk)
        small = thumbnail_size(rebuilt.thumbnail)
        large = thumbnail_size(rebuilt.thumbnail_large)
        assert (small[1], large[1]) == (320, 384)  # 216x384: the large one is the original's size
        assert small[0] / small[1] == pytest.approx(9 / 16, rel=0.02)
        # The old square-fitted thumbnail is gone from storage.
        assert not default_storage.exists(old.thumbnail.name)
    assert Image.objects.get(pk=done.pk).thumbnail.name == done.thumbnail.name

    names = sorted(Image.objects.values_list("thumbnail", "thumbnail_large"))
    with django_capture_on_commit_callbacks(execute=True):
        out, _err = rebuild()
    assert "Thumbnails made for 0 images; 3 already had them;" in out
    assert sorted(Image.objects.values_list("thumbnail", "thumbnail_large")) == names


def test_it_remakes_every_thumbnail_with_force(alice, django_capture_on_commit_callbacks):
    image = done_generation(alice).images.get()
    with django_capture_on_commit_callbacks(execute=True):
        out, _err = rebuild("--force")
    assert "Thumbnails made for 1 image; 0 already had them;" in out
    remade = Image.objects.get(pk=image.pk)
    assert remade.thumbnail.name != image.thumbnail.name
    assert not default_storage.exists(image.thumbnail.name)
    assert default_storage.exists(remade.thumbnail_large.name)


def test_it_rebuilds_from_a_jpeg_original(alice, django_capture_on_commit_callbacks):
    generation = done_generation(alice, aspect_ratio="16:9", output_format="jpg")
    image = generation.images.get()
    square_thumbnail_of_old(image)
    with django_capture_on_commit_callbacks(execute=True):
        rebuild()
    image.refresh_from_db()
    # 384x216: shorter than either thumbnail, so both are the original's size, not upscaled.
    assert thumbnail_size(image.thumbnail) == thumbnail_size(image.thumbnail_large) == (384, 216)


def test_it_warns_about_a_missing_original_and_goes_on(alice, django_capture_on_commit_callbacks):
    generation = done_generation(alice, images=2)
    lost, kept = generation.images.all()
    square_thumbnail_of_old(lost)
    square_thumbnail_of_old(kept)
    default_storage.delete(lost.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        out, err = rebuild()
    assert f"Image {lost.pk}: its original {lost.file.name} could not be read" in err
    assert "Thumbnails made for 1 image; 0 already had them; 1 original could not be read." in out
    assert Image.objects.get(pk=kept.pk).thumbnail_large
    assert not Image.objects.get(pk=lost.pk).thumbnail_large
    assert default_storage.exists(lost.thumbnail.name)  # left as it was


def test_it_makes_thumbnails_for_factory_images_too(alice):
    image = make_image(make_generation(alice), 384, 192)
    assert thumbnail_size(image.thumbnail) == (384, 192)
    assert thumbnail_size(image.thumbnail_large) == (384, 192)
