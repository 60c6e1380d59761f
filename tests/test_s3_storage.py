"""Media on S3-compatible object storage, against a real S3 server on loopback (tests/s3.py).

The whole image path with STORAGE_BACKEND=s3: the pipeline's download stores the original and
its thumbnails in the bucket; the owner's image and thumbnails, and a share link's image for a
stranger, are redirects to short-lived presigned URLs that the bucket answers with the right
bytes, type and file name, except a download with provenance written in, which streams
from the bucket through Django; another user gets 404; a revoked link hands out no more URLs;
deleting removes the objects; `rebuild_thumbnails` works there; an album link serves its images
from the bucket too. Finished generations come from tests/factories.py (written to the bucket as
the pipeline writes them) except in the pipeline test.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from urllib.parse import urlsplit

import pytest
import requests
from django.core.management import call_command
from django.urls import reverse
from PIL import Image as PILImage

from accounts.models import Preferences
from gallery import tasks
from gallery.models import Collection, Generation, Image, ShareLink
from tests.factories import done_generation
from tests.s3 import Bucket, settings_from_env
from tests.support import finished, run_queued_tasks

PROMPT = "a secret recipe for banana bread"
PROMPT_WORDS = ("secret", "recipe", "bread")


@pytest.fixture
def image(alice, s3_bucket) -> Image:
    return done_generation(alice, PROMPT, aspect_ratio="16:9").images.get()


def followed(response, bucket: Bucket) -> requests.Response:
    """The bucket's answer to the presigned URL a view redirected to."""
    assert response.status_code == 302
    url = response["Location"]
    assert url.startswith(f"{bucket.endpoint_url}/{bucket.name}/")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    answer = requests.get(url, timeout=5)
    assert answer.status_code == 200
    return answer


def test_it_chooses_s3_from_the_environment():
    configured = settings_from_env(
        {
            "AWS_STORAGE_BUCKET_NAME": "banana-media",
            "AWS_S3_ENDPOINT_URL": "https://minio.example.com:9000",
            "AWS_QUERYSTRING_EXPIRE": "120",
        }
    )
    storage = configured.STORAGES["default"]
    assert storage["BACKEND"] == "storages.backends.s3.S3Storage"
    assert storage["OPTIONS"]["bucket_name"] == "banana-media"
    assert storage["OPTIONS"]["endpoint_url"] == "https://minio.example.com:9000"
    assert storage["OPTIONS"]["querystring_expire"] == 120
    assert storage["OPTIONS"]["default_acl"] is None  # no public ACL
    # Path style on a custom endpoint, so images come from the endpoint's own origin.
    img_src = configured.CONTENT_SECURITY_POLICY["DIRECTIVES"]["img-src"]
    assert img_src == ["'self'", "data:", "https://minio.example.com:9000"]

    # On AWS in a region with virtual-host style, the bucket's own host.
    aws = settings_from_env(
        {
            "STORAGE_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": "banana-media",
            "AWS_S3_REGION_NAME": "eu-west-1",
            "AWS_S3_ADDRESSING_STYLE": "virtual",
        }
    )
    assert aws.MEDIA_ORIGIN == "https://banana-media.s3.eu-west-1.amazonaws.com"

    local = settings_from_env({})
    assert local.STORAGES["default"] == {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    assert local.CONTENT_SECURITY_POLICY["DIRECTIVES"]["img-src"] == ["'self'", "data:"]
    with pytest.raises(ValueError, match="STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME"):
        settings_from_env({"STORAGE_BACKEND": "s3"})


@pytest.mark.django_db(transaction=True)
def test_it_stores_the_download_and_its_thumbnails_in_the_bucket(alice, simulator, s3_bucket):
    generation = Generation.objects.create(owner=alice, prompt="a fox", aspect_ratio="16:9")
    tasks.wake_submission()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE, generation.failure_text

    image = generation.images.get()
    keys = [image.file.name, image.thumbnail.name, image.thumbnail_large.name]
    assert s3_bucket.object_keys() == set(keys)
    original = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=image.file.name)
    assert original["ContentLength"] == image.bytes
    assert original["ContentType"] == "image/png"
    for key, height in [(keys[1], 320), (keys[2], 640)]:
        with PILImage.open(io.BytesIO(s3_bucket.read(key))) as thumb:
            assert (thumb.format, thumb.height) == ("WEBP", height)


def test_it_redirects_the_owner_to_presigned_urls(client, alice, image, s3_bucket):
    client.force_login(alice)
    answer = followed(client.get(reverse("gallery:image", args=[image.pk])), s3_bucket)
    assert answer.content == s3_bucket.read(image.file.name)
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.headers["Content-Disposition"] == f'inline; filename="{image.download_name}"'
    assert answer.headers["Cache-Control"] == "private, max-age=86400"

    # A download with nothing written into it is the stored object too.
    Preferences.objects.create(user=alice, file_provenance=False)
    response = client.get(reverse("gallery:image", args=[image.pk]) + "?download")
    answer = followed(response, s3_bucket)
    disposition = f'attachment; filename="{image.download_name}"'
    assert answer.headers["Content-Disposition"] == disposition
    # The browser may keep the redirect while the URL it points at is valid, and no longer.
    assert response["Cache-Control"] == "private, max-age=150"

    for name, field in [
        ("gallery:thumbnail", image.thumbnail),
        ("gallery:thumbnail_large", image.thumbnail_large),
    ]:
        answer = followed(client.get(reverse(name, args=[image.pk])), s3_bucket)
        assert answer.headers["Content-Type"] == "image/webp"
        assert answer.content == s3_bucket.read(field.name)

    # The pages that show them let images come from the bucket, and only from there.
    policy = client.get(reverse("gallery:index"))["Content-Security-Policy"]
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(s3_bucket.endpoint_url))
    # Its directives by name: django-csp writes them in no fixed order.
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["img-src"] == f"'self' data: {origin}"
    assert s3_bucket.origin == origin


def test_it_streams_a_download_with_provenance_from_the_bucket(client, alice, image, s3_bucket):
    """Provenance is written on the way out, so such a download comes through Django from
    the bucket (a presigned URL hands out the object as stored); the object stays as it was."""
    stored = s3_bucket.read(image.file.name)
    client.force_login(alice)
    response = client.get(reverse("gallery:image", args=[image.pk]) + "?download")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{image.download_name}"'
    data = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(data)
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.text["Description"] == PROMPT
    assert s3_bucket.read(image.file.name) == stored
    assert hashlib.sha256(stored).hexdigest() == image.sha256

    client.post(reverse("gallery:share_create", args=[image.pk]), {"show_prompt": "on"})
    link = ShareLink.objects.get()
    client.logout()
    response = client.get(f"/s/{link.token}/image")
    assert response.status_code == 200
    with PILImage.open(io.BytesIO(b"".join(response.streaming_content))) as picture:
        assert picture.text["Description"] == PROMPT


def test_it_checks_ownership(client, bob, image):
    client.force_login(bob)
    for name in ("gallery:image", "gallery:thumbnail", "gallery:thumbnail_large"):
        response = client.get(reverse(name, args=[image.pk]))
        assert response.status_code == 404, name
        assert "Location" not in response
    client.logout()
    response = client.get(reverse("gallery:image", args=[image.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_it_keeps_the_objects_private(image, s3_bucket):
    for key in s3_bucket.object_keys():
        grants = s3_bucket.client.get_object_acl(Bucket=s3_bucket.name, Key=key)["Grants"]
        assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"], key
        assert all(grant["Grantee"]["Type"] == "CanonicalUser" for grant in grants), key


def test_it_serves_a_share_link_from_the_bucket_until_revoked(client, alice, image, s3_bucket):
    client.force_login(alice)
    client.post(reverse("gallery:share_create", args=[image.pk]), {})
    link = ShareLink.objects.get()
    client.logout()

    page = client.get(f"/s/{link.token}/")
    assert page.status_code == 200
    assert f"http://testserver/s/{link.token}/image" in page.content.decode()
    response = client.get(f"/s/{link.token}/image")
    assert response["Referrer-Policy"] == "no-referrer"
    assert "no-cache" in response["Cache-Control"]
    answer = followed(response, s3_bucket)
    assert answer.content == s3_bucket.read(image.file.name)
    assert answer.headers["Content-Type"] == "image/png"
    # Issue 9's privacy holds at the bucket too: a hidden prompt is in no name or header.
    assert answer.headers["Content-Disposition"] == 'inline; filename="banana-shared-image.png"'
    for value in [*response.headers.values(), *answer.headers.values()]:
        assert not any(word in value.lower() for word in PROMPT_WORDS), value

    handed_out = response["Location"]
    link.revoke()
    gone = client.get(f"/s/{link.token}/image")
    assert gone.status_code == 404
    assert "Location" not in gone
    assert "revoked or has expired" in gone.content.decode()
    # A URL handed out before lives on until it expires (AWS_QUERYSTRING_EXPIRE, 300 s).
    assert requests.get(handed_out, timeout=5).status_code == 200


def test_it_deletes_the_objects_with_the_generation(
    client, alice, image, s3_bucket, django_capture_on_commit_callbacks
):
    other = done_generation(alice, "another").images.get()
    assert len(s3_bucket.object_keys()) == 6
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("gallery:delete", args=[image.generation_id]))
    assert response.status_code == 302
    assert s3_bucket.object_keys() == {
        other.file.name,
        other.thumbnail.name,
        other.thumbnail_large.name,
    }


def test_it_rebuilds_thumbnails_in_the_bucket(
    alice, image, s3_bucket, django_capture_on_commit_callbacks
):
    lost = done_generation(alice, "lost").images.get()
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=lost.file.name)
    out, err = io.StringIO(), io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("rebuild_thumbnails", "--force", stdout=out, stderr=err)
    assert "Thumbnails made for 1 image; 0 already had them; 1 original could not be read." in (
        out.getvalue()
    )
    assert f"Image {lost.pk}: its original {lost.file.name} could not be read" in err.getvalue()

    rebuilt = Image.objects.get(pk=image.pk)
    assert rebuilt.thumbnail.name != image.thumbnail.name
    keys = s3_bucket.object_keys()
    assert {rebuilt.thumbnail.name, rebuilt.thumbnail_large.name} <= keys
    assert not {image.thumbnail.name, image.thumbnail_large.name} & keys  # the old ones went
    with PILImage.open(io.BytesIO(s3_bucket.read(rebuilt.thumbnail_large.name))) as thumb:
        assert thumb.size == (384, 216)  # the original's size: never upscaled


def test_it_exports_a_zip_from_the_bucket(client, alice, image, s3_bucket):
    jpeg = done_generation(alice, "an owl", output_format="jpg").images.get()
    client.force_login(alice)
    response = client.get(reverse("gallery:export"))
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    entries = json.loads(archive.read("manifest.json"))["images"]
    assert sorted(entry["image_id"] for entry in entries) == sorted([image.pk, jpeg.pk])
    for entry in entries:
        data = archive.read(entry["file"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        stored = s3_bucket.read(Image.objects.get(pk=entry["image_id"]).file.name)
        assert hashlib.sha256(stored).hexdigest() == entry["original_sha256"]


def test_it_serves_an_album_links_images_from_the_bucket(client, alice, image, s3_bucket):
    album = Collection.objects.create(owner=alice, name="Bread")
    album.add(Generation.objects.filter(pk=image.generation_id))
    link = ShareLink.objects.create(collection=album)
    for name, field in [("album_image", image.file), ("album_thumbnail", image.thumbnail_large)]:
        response = client.get(reverse(name, args=[link.token, image.pk]))
        assert "no-cache" in response["Cache-Control"]
        answer = followed(response, s3_bucket)
        assert answer.content == s3_bucket.read(field.name)
        assert "banana-shared-image." in answer.headers["Content-Disposition"]
    album.remove(Generation.objects.filter(pk=image.generation_id))
    gone = client.get(reverse("album_image", args=[link.token, image.pk]))
    assert gone.status_code == 404 and "Location" not in gone
