"""The download step of the pipeline against hostile file hosts on loopback.

The fetcher's own rules are tested in test_result_guard.py; here each guard is seen from the
generation's side: what state it ends in, with what words, and that nothing is retried that
cannot succeed, nor given up that still could.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from PIL import Image as PILImage

from gallery import tasks
from gallery.models import Generation
from tests.hostile import HostileServer, bilevel_png

pytestmark = pytest.mark.django_db(transaction=True)


def png(size: tuple[int, int] = (1024, 1024)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, (240, 200, 40)).save(out, "PNG", compress_level=1)
    return out.getvalue()


FILES = {
    "good.png": ("image/png", png()),
    "good.jpg": ("image/jpeg", b""),
    "truncated.png": ("image/png", png()[:5000]),
    "bomb-12000.png": ("image/png", bilevel_png(12000, 12000)),
    "bomb-30000.png": ("image/png", bilevel_png(30000, 30000, complete=False)),
}


def start(port: int = 0) -> HostileServer:
    jpeg = io.BytesIO()
    PILImage.new("RGB", (1024, 1024), (10, 20, 30)).save(jpeg, "JPEG")
    server = HostileServer({**FILES, "good.jpg": ("image/jpeg", jpeg.getvalue())}, port=port)
    server.start()
    return server


@pytest.fixture
def files(settings) -> Iterator[HostileServer]:
    """The file host the app allows."""
    server = start()
    settings.AIGPTIMAGE_RESULT_HOSTS_ALLOWED = [server.host_port]
    yield server
    server.stop()


@pytest.fixture
def bystander() -> Iterator[HostileServer]:
    """Another server on loopback that nothing may reach."""
    server = start()
    yield server
    server.stop()


def finished_at_provider(owner, *urls: str, **fields) -> Generation:
    return Generation.objects.create(
        owner=owner,
        prompt="a saved picture",
        status=Generation.Status.DOWNLOADING,
        task_id="task-1",
        result_urls=list(urls),
        submitted_at=timezone.now() - timedelta(seconds=20),
        provider_completed_at=timezone.now(),
        **fields,
    )


def test_it_saves_the_image_from_an_allowed_file_host(alice, files):
    generation = finished_at_provider(alice, files.url("/files/good.png"))
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.DONE
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    image = generation.images.get()
    assert (image.width, image.height, image.format) == (1024, 1024, "PNG")
    assert image.file.read() == FILES["good.png"][1]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{bystander}/files/good.png",
        "http://localhost:{bystander}/files/good.png",
        "http://[::1]:{bystander}/files/good.png",
        "http://2130706433:{bystander}/files/good.png",
        "http://0x7f000001:{bystander}/files/good.png",
        "http://127.1:{bystander}/files/good.png",
        "https://10.0.0.1/files/good.png",
        "https://192.168.1.1/files/good.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "{files}/redirect?to=http://127.0.0.1:{bystander}/files/good.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1/files/good.png",
    ],
)
def test_it_fails_plainly_and_connects_nowhere_for_a_refused_result_url(
    alice, files, bystander, url
):
    url = url.format(bystander=bystander.server_port, files=files.url(""))
    generation = finished_at_provider(alice, url)
    started = time.monotonic()
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.FAILED
    assert time.monotonic() - started < 2
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "refused"
    # One and the same words for every refused address: nobody scans ports through them.
    assert generation.fail_message == (
        "The image service gave a result address we do not download from. Retry to make it again."
    )
    assert bystander.connections == []
    assert not generation.images.exists()


@pytest.mark.parametrize(
    ("path", "output_format", "words"),
    [
        ("/declared-huge", "png", "larger than we accept"),
        ("/files/truncated.png", "png", "not a complete image"),
        ("/files/bomb-12000.png", "png", "far larger than the size"),
        ("/files/bomb-30000.png", "png", "far larger than the size"),
        ("/files/good.jpg", "png", "a JPEG, not the PNG"),
    ],
)
def test_it_refuses_a_file_that_is_not_the_image_asked_for(
    alice, files, path, output_format, words
):
    generation = finished_at_provider(alice, files.url(path), output_format=output_format)
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.FAILED
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "refused"
    assert words in generation.fail_message
    assert not generation.images.exists()


def test_it_cuts_a_trickling_download_at_the_deadline_and_tries_again_later(alice, files, settings):
    settings.DOWNLOAD_DEADLINE = 1.0
    settings.AIGPTIMAGE_RETRY_BASE = 30.0  # so that the next try is plainly in the future
    generation = finished_at_provider(alice, files.url("/trickle"))
    started = time.monotonic()
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.RETRY
    # 100,000 bytes at one a second would take a day; the deadline is 1 s (plus a loaded machine).
    assert time.monotonic() - started < 3.0
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DOWNLOADING
    assert generation.download_attempts == 1
    assert generation.lease_until is None  # let go, so the next try can take it
    assert generation.retry_at > timezone.now()


def test_it_counts_an_unexpected_error_and_fails_after_the_limit(alice, files, settings, tmp_path):
    settings.DOWNLOAD_ATTEMPTS = 3
    # Storage that cannot write: MEDIA_ROOT is a file, so saving the image raises.
    broken = tmp_path / "not-a-folder"
    broken.write_text("")
    settings.MEDIA_ROOT = broken
    generation = finished_at_provider(alice, files.url("/files/good.png"))
    outcomes = []
    for _ in range(3):
        outcomes.append(tasks.download_images(generation.pk))
        Generation.objects.filter(pk=generation.pk).update(retry_at=timezone.now())
    assert outcomes == [
        tasks.DownloadOutcome.RETRY,
        tasks.DownloadOutcome.RETRY,
        tasks.DownloadOutcome.FAILED,
    ]
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.download_attempts == 2
    assert generation.fail_message == (
        "The finished image could not be saved because of an error on our side. "
        "Retry to make it again."
    )


def test_it_waits_out_a_file_host_that_is_down_and_still_saves_the_image(alice, files, settings):
    """The file host refuses connections for longer than any fixed number of tries would
    cover (the old limit was 5); the image is saved once it is back. Time is compressed: the
    backoff starts at 0.01 s instead of 2 s."""
    settings.DOWNLOAD_ATTEMPTS = 3  # the limit for unexpected errors: an outage is not one
    port = files.server_port
    files.stop()
    generation = finished_at_provider(alice, f"http://127.0.0.1:{port}/files/good.png")
    for attempt in range(1, 9):
        assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.RETRY
        generation.refresh_from_db()
        assert generation.status == Generation.Status.DOWNLOADING
        assert generation.download_attempts == attempt
        time.sleep(max(0.0, (generation.retry_at - timezone.now()).total_seconds()))
        # The poll runner (or the reconcile) hands the download over once its wait is over.
        assert tasks.hand_over_downloads(timezone.now()) == 1
    back = start(port)
    try:
        assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.DONE
    finally:
        back.stop()
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert generation.images.count() == 1


def test_it_gives_up_once_the_result_urls_can_no_longer_be_valid(alice, files, settings):
    settings.AIGPTIMAGE_RESULT_TTL = 3600
    port = files.server_port
    files.stop()
    generation = finished_at_provider(alice, f"http://127.0.0.1:{port}/files/good.png")
    Generation.objects.filter(pk=generation.pk).update(
        provider_completed_at=timezone.now() - timedelta(hours=2)
    )
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.FAILED
    generation.refresh_from_db()
    assert generation.fail_code == "download"
    assert generation.fail_message == (
        "The finished image could not be fetched before it expired. The image service's file "
        "server could not be reached. Retry to make it again."
    )


def test_it_keeps_at_most_the_configured_number_of_results(alice, files, settings):
    settings.AIGPTIMAGE_MAX_RESULT_URLS = 2
    url = files.url("/files/good.png")
    generation = finished_at_provider(alice, *[f"{url}?n={i}" for i in range(20)])
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.DONE
    assert generation.images.count() == 2
    assert len(files.requests) == 2
