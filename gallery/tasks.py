"""Background work, run by django-q2 workers. Plain functions that take primary keys.

The database is the source of truth for every generation; the queue only wakes workers up.
Every function here is safe to run twice, and `reconcile` (scheduled every minute) repairs
whatever a lost queue message or a killed worker left behind.

- `submit_queued` sends queued generations to the provider while slots are free.
- `poll_sweep` polls every due generation within a request budget, hands finished ones to
  `download_images`, and re-arms itself while work is in flight. A lease keeps it single.
- `download_images` stores the results through Django's storage API with a WebP thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import requests
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError
from django.utils import timezone
from django_q.tasks import async_task
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from gallery import provider
from gallery.models import Generation, Image, ProviderAccount, backoff

log = logging.getLogger(__name__)

EXPECTED_FORMATS = {"png": "PNG", "jpg": "JPEG"}
POLL_THREADS = 4


def wake_submission() -> None:
    async_task("gallery.tasks.submit_queued", task_name="submit_queued")


def ensure_sweep() -> None:
    if not ProviderAccount.get().sweep_is_running():
        async_task("gallery.tasks.poll_sweep", task_name="poll_sweep")


def has_active_work() -> bool:
    """Whether the sweep has anything to do: tasks at the provider, downloads, queued work.

    Queued work waiting out a 409, 429 or 500 counts; while submission is paused it does not,
    since then only the reconcile's probe may submit.
    """
    if Generation.objects.in_flight().exists() or Generation.objects.downloading().exists():
        return True
    return not ProviderAccount.get().is_paused and Generation.objects.queued().exists()


# Submission


def submit_queued() -> int:
    """Submit queued generations while the provider has free slots. Returns how many went."""
    client = provider.get_client()
    submitted = 0
    while (generation := Generation.objects.claim_next(timezone.now())) is not None:
        outcome = submit(generation, client)
        submitted += outcome == "submitted"
        if outcome == "stop":
            break
    # The sweep submits the rest as slots free up, and retries after a 409/429/500 wait.
    if has_active_work():
        ensure_sweep()
    return submitted


def submit(generation: Generation, client: provider.ProviderClient) -> str:
    """Send one claimed generation. Returns "submitted", "next" (go on) or "stop" (stop for now)."""
    account = ProviderAccount.get()
    try:
        task_id = client.create_task(
            generation.prompt,
            aspect_ratio=generation.aspect_ratio,
            resolution=generation.resolution,
            output_format=generation.output_format,
            request_id=str(generation.request_id),
        )
    except provider.Conflict:
        # The provider's active-task slots are full (perhaps by another client of the same
        # key). Not a failure: the generation waits its turn.
        generation.requeue()
        account.wait_before_create(settings.AIGPTIMAGE_CONFLICT_WAIT)
        log.info("createTask 409 for generation %s: slots full, kept queued", generation.pk)
        return "stop"
    except provider.RateLimited as e:
        generation.requeue()
        account.wait_before_create(e.retry_after)
        log.info("createTask 429: waiting %.1f s as told", e.retry_after)
        return "stop"
    except (provider.Unauthorized, provider.InsufficientCredits) as e:
        generation.requeue()
        account.pause(e)
        return "stop"
    except (provider.BadRequest, provider.ValidationFailed) as e:
        generation.mark_failed(e.message, str(e.code))
        return "next"
    except provider.RETRYABLE_ERRORS as e:
        attempt = generation.attempts + 1
        if attempt >= settings.AIGPTIMAGE_RETRY_ATTEMPTS:
            generation.mark_failed(
                f"The image service kept failing ({e.message}). Nothing was charged twice; "
                "retry when it is back.",
                str(e.code or "error"),
            )
        else:
            wait = backoff(attempt, settings.AIGPTIMAGE_RETRY_BASE)
            generation.requeue(retry_in=wait, count_attempt=True)
            log.warning("createTask failed for %s (%s); retry in %.1f s", generation.pk, e, wait)
        return "next"
    if account.is_paused:
        account.resume()
    generation.mark_submitted(task_id)
    return "submitted"


# Polling


class PollBudget:
    """At most `per_second` recordInfo calls in any one-second window, across rounds."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.sent: deque[float] = deque()

    def available(self) -> int:
        now = time.monotonic()
        while self.sent and now - self.sent[0] >= 1.0:
            self.sent.popleft()
        return max(0, self.per_second - len(self.sent))

    def spend(self, calls: int) -> None:
        self.sent.extend([time.monotonic()] * calls)

    def seconds_until_free(self) -> float:
        if self.available():
            return 0.0
        return max(0.0, 1.0 - (time.monotonic() - self.sent[0]))


def poll_sweep() -> None:
    """Poll every due generation for up to SWEEP_SECONDS, then hand over to a fresh sweep."""
    account = ProviderAccount.get()
    # The lease outlives one round (whose HTTP calls may take up to the timeout) and is renewed
    # every round, so a sweep killed mid-way holds up polling for a short while only.
    lease = settings.AIGPTIMAGE_TIMEOUT + 15
    token = account.take_sweep_lease(lease)
    if token is None:
        return
    client = provider.get_client()
    budget = PollBudget(settings.AIGPTIMAGE_POLL_BUDGET)
    deadline = time.monotonic() + settings.SWEEP_SECONDS
    try:
        with ThreadPoolExecutor(POLL_THREADS, thread_name_prefix="poll") as pool:
            while time.monotonic() < deadline and account.renew_sweep_lease(token, lease):
                sweep_once(client, pool, budget)
                if not has_active_work():
                    break
                time.sleep(_pause_after_round(budget))
    finally:
        account.release_sweep_lease(token)
    if has_active_work():
        async_task("gallery.tasks.poll_sweep", task_name="poll_sweep")


def _pause_after_round(budget: PollBudget) -> float:
    # Sleep until the next poll is due, or until the budget has room again, but never long, so
    # that new work and freed slots are picked up quickly.
    if wait := budget.seconds_until_free():
        return wait
    next_due = (
        Generation.objects.polling()
        .exclude(next_poll_at__isnull=True)
        .order_by("next_poll_at")
        .values_list("next_poll_at", flat=True)
        .first()
    )
    if next_due is None:
        return 0.2
    return min(1.0, max(0.02, (next_due - timezone.now()).total_seconds()))


def sweep_once(
    client: provider.ProviderClient, pool: ThreadPoolExecutor, budget: PollBudget
) -> None:
    """One round: polls within the budget, then downloads that are due, then submissions."""
    now = timezone.now()
    account = ProviderAccount.get()
    if account.may_query(now) and (room := budget.available()):
        due = list(Generation.objects.due_for_poll(now).order_by("next_poll_at")[:room])
        overdue = [g for g in due if g.is_past_deadline(now)]
        for generation in overdue:
            generation.mark_failed(
                "The image service took too long and the request was given up. Retry to try again.",
                "timeout",
            )
        due = [g for g in due if g not in overdue]
        budget.spend(len(due))
        # Only the HTTP calls run in threads; every database write stays in this thread.
        outcomes = pool.map(lambda g: _fetch_record(client, g.task_id), due)
        for generation, outcome in zip(due, outcomes, strict=True):
            if not apply_poll(generation, outcome, account):
                break
    for generation in Generation.objects.due_for_download(now)[:20]:
        if generation.lease_download(settings.DOWNLOAD_DEADLINE + 30):
            async_task("gallery.tasks.download_images", generation.pk, task_name="download")
    if Generation.objects.ready(now).exists():
        submit_queued()


def _fetch_record(
    client: provider.ProviderClient, task_id: str
) -> provider.TaskRecord | provider.ProviderError:
    try:
        return client.get_task(task_id)
    except provider.ProviderError as e:
        return e


def apply_poll(
    generation: Generation,
    outcome: provider.TaskRecord | provider.ProviderError,
    account: ProviderAccount,
) -> bool:
    """Apply one poll's outcome. Returns False when the round should stop polling."""
    if isinstance(outcome, provider.TaskRecord):
        if outcome.succeeded:
            if generation.mark_succeeded(outcome, settings.DOWNLOAD_DEADLINE + 30):
                async_task("gallery.tasks.download_images", generation.pk, task_name="download")
        elif outcome.failed:
            generation.mark_provider_failed(outcome)
        else:
            generation.record_poll(outcome)
        return True
    error = outcome
    if isinstance(error, provider.TaskNotFound):
        generation.mark_failed(
            "The image service no longer knows this request, so its image cannot be fetched. "
            "Retry to make it again.",
            "404",
        )
    elif isinstance(error, provider.RateLimited):
        account.wait_before_query(error.retry_after)
        generation.record_poll_error(error.retry_after, count=False)
        return False
    elif isinstance(error, provider.Unauthorized | provider.InsufficientCredits):
        account.pause(error)
        generation.record_poll_error(settings.AIGPTIMAGE_PAUSE_PROBE, count=False)
        return False
    elif isinstance(error, provider.RETRYABLE_ERRORS):
        attempt = generation.poll_errors + 1
        if attempt >= settings.AIGPTIMAGE_RETRY_ATTEMPTS:
            generation.mark_failed(
                f"The image service kept failing while we checked on this image ({error.message}).",
                str(error.code or "error"),
            )
        else:
            generation.record_poll_error(backoff(attempt, settings.AIGPTIMAGE_RETRY_BASE))
    else:
        generation.mark_failed(error.message, str(error.code or "error"))
    return True


# Downloading


class DownloadError(Exception):
    """A result could not be fetched this time; it may work on a later try."""


class DownloadGone(DownloadError):
    """The result URL answers that the file is gone (expired): trying again will not help."""


def download_images(generation_id: int) -> None:
    generation = Generation.objects.downloading().filter(pk=generation_id).first()
    if generation is None:
        return
    stored = set(generation.images.values_list("index", flat=True))
    for index, url in enumerate(generation.result_urls):
        if index in stored:
            continue
        try:
            data = fetch_result(url)
            store_image(generation, index, data)
        except DownloadGone:
            generation.mark_failed(
                "The finished image expired at the image service before it could be saved. "
                "Retry to make it again.",
                "expired",
            )
            return
        except DownloadError as e:
            attempt = generation.attempts + 1
            if attempt >= settings.DOWNLOAD_ATTEMPTS:
                generation.mark_failed(f"The finished image could not be saved: {e}", "download")
            else:
                generation.record_download_error(backoff(attempt, settings.AIGPTIMAGE_RETRY_BASE))
                log.warning("Download for generation %s failed (%s); will retry", generation.pk, e)
            return
    generation.mark_done()


def fetch_result(url: str) -> bytes:
    """Stream one result file with a size cap and an overall deadline."""
    deadline = time.monotonic() + settings.DOWNLOAD_DEADLINE
    try:
        with requests.get(url, stream=True, timeout=(10, 30)) as response:
            if response.status_code in (401, 403, 404, 410):
                raise DownloadGone(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise DownloadError(f"the file server answered HTTP {response.status_code}")
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > settings.DOWNLOAD_MAX_BYTES:
                raise DownloadError("the file is larger than allowed")
            buffer = io.BytesIO()
            for chunk in response.iter_content(64 * 1024):
                buffer.write(chunk)
                if buffer.tell() > settings.DOWNLOAD_MAX_BYTES:
                    raise DownloadError("the file is larger than allowed")
                if time.monotonic() > deadline:
                    raise DownloadError("the download took too long")
            return buffer.getvalue()
    except requests.RequestException as e:
        raise DownloadError(f"the download broke off ({e.__class__.__name__})") from e


def store_image(generation: Generation, index: int, data: bytes) -> Image:
    expected = EXPECTED_FORMATS[generation.output_format]
    try:
        with PILImage.open(io.BytesIO(data)) as probe:
            probe.verify()
        picture = PILImage.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DownloadError("the file is not a readable image") from e
    if picture.format != expected:
        raise DownloadError(f"the file is {picture.format}, not the {expected} that was asked for")
    image = Image(
        generation=generation,
        index=index,
        width=picture.width,
        height=picture.height,
        bytes=len(data),
        format=picture.format,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    image.file.save(f"original.{image.extension}", ContentFile(data), save=False)
    image.thumbnail.save("thumb.webp", ContentFile(make_thumbnail(picture)), save=False)
    try:
        image.save()
    except IntegrityError:
        # A second run of this task stored the same image first: keep theirs, drop ours.
        image.file.delete(save=False)
        image.thumbnail.delete(save=False)
        return Image.objects.get(generation=generation, index=index)
    return image


def make_thumbnail(picture: PILImage.Image) -> bytes:
    thumb = picture.convert("RGB")
    thumb.thumbnail((settings.THUMBNAIL_SIZE, settings.THUMBNAIL_SIZE), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, "WEBP", quality=80, method=4)
    return out.getvalue()


# Repair


def reconcile() -> None:
    """Scheduled every minute: move on anything stuck or dropped."""
    now = timezone.now()
    # A worker died between claiming and recording the answer. Sending again is safe: the
    # same X-Request-ID returns the task the provider may already have made.
    for generation in Generation.objects.stuck_submitting(
        now, 2 * settings.AIGPTIMAGE_TIMEOUT + 30
    ):
        generation.requeue()
    Generation.objects.polling().filter(next_poll_at__isnull=True).update(next_poll_at=now)
    if Generation.objects.ready(now).exists():
        submit_queued()
    if has_active_work():
        ensure_sweep()
