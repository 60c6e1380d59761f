"""Background work, run by django-q2 workers. Plain functions that take primary keys.

The database is the source of truth for every generation; the queue only wakes workers up.
Work flows one way, and each step hands over forward with a row state and a queue message:

    a post -> queued -> `submit_queued` -> at the provider -> `poll_due` -> downloading
           -> `download_images` -> done (or failed, with a plain reason, at any step)

- `submit_queued` and `poll_due` are runners. Each holds a lease (at most PIPELINE_RUNNERS of
  each kind run at once, over every cluster), works in bounded batches for RUNNER_SECONDS while
  a heartbeat thread renews its lease and the leases of the rows it holds, then hands over to a
  fresh copy of itself if work is left. Submission and polling never wait on each other.
- `download_images` stores one generation's results, holding that generation's lease, so a
  download never runs twice at once.
- `reconcile` (every minute, and whenever a worker process starts) repairs what a lost queue
  message or a killed worker left behind.

Every function here is safe to run twice.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.base import File
from django.db import IntegrityError, close_old_connections, connection
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

from gallery import provider
from gallery.models import (
    Generation,
    Image,
    Lease,
    Post,
    ProviderAccount,
    backoff,
    plain_message,
)

log = logging.getLogger(__name__)

SUBMIT_THREADS = 8
POLL_THREADS = 8
DOWNLOAD_HANDOVER_BATCH = 50
RUNNERS = {"submit": "gallery.tasks.submit_queued", "poll": "gallery.tasks.poll_due"}


class SubmitOutcome(enum.Enum):
    ACCEPTED = "accepted"
    FAILED = "failed"
    RETRY = "retry"  # this generation waits out a backoff; others may go on
    HOLD = "hold"  # nothing more may be sent for now (409, 429, a pause)


class PollOutcome(enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"
    HOLD = "hold"


class DownloadOutcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"  # not downloading, or another worker holds it


# Runners


class Runner:
    """A held runner lease, and the generations the runner holds under it.

    A runner works for a turn of RUNNER_SECONDS. If work is left then, it asks for a successor
    and works on until the successor's task has started, then hands its lease straight over
    (see Lease). The successor's message may wait behind a burst of downloads; after
    RUNNER_HANDOVER_TURNS more turns without it (or in a cluster that is stopping) it stops.
    """

    def __init__(self, kind: str, name: str, token: str) -> None:
        self.kind = kind
        self.name = name
        self.token = token
        self.lost = threading.Event()
        self.done = threading.Event()  # lost, or a successor is waiting: stop after this batch
        self._rows: set[int] = set()
        self._lock = threading.Lock()
        self._turn_ends = time.monotonic() + settings.RUNNER_SECONDS
        self._asked = False

    def hold(self, pks: Iterable[int]) -> None:
        with self._lock:
            self._rows.update(pks)

    def let_go(self, pks: Iterable[int]) -> None:
        with self._lock:
            self._rows.difference_update(pks)

    def keeps_going(self) -> bool:
        """Whether to run another batch; past the turn, asks for a successor once."""
        if self.done.is_set():
            return False
        now = time.monotonic()
        if now < self._turn_ends:
            return True
        if now > self._turn_ends + settings.RUNNER_HANDOVER_TURNS * settings.RUNNER_SECONDS:
            return False  # no successor came (the queue is long, or the cluster is stopping)
        if not self._asked:
            self._asked = True
            if Lease.ask_successor(self.name, self.token):
                async_task(RUNNERS[self.kind], task_name=self.kind)
        return True

    def pause(self, seconds: float) -> None:
        """Sleep, but wake for the end of the turn and for the last moment to hand over."""
        now = time.monotonic()
        last = self._turn_ends + settings.RUNNER_HANDOVER_TURNS * settings.RUNNER_SECONDS
        checkpoints = [t - now for t in (self._turn_ends, last)]
        self.done.wait(max(0.0, min([seconds, *(c for c in checkpoints if c > 0)])))

    def renew(self) -> None:
        seconds = settings.RUNNER_LEASE
        if not Lease.renew(self.name, self.token, seconds):
            log.warning("Runner %s lost its lease; it stops after this batch", self.name)
            self.lost.set()
            self.done.set()
            return
        if self._asked and Lease.successor_waiting(self.name, self.token):
            self.done.set()
        with self._lock:
            rows = list(self._rows)
        if rows:
            until = timezone.now() + timedelta(seconds=seconds)
            Generation.objects.filter(pk__in=rows, lease_until__isnull=False).update(
                lease_until=until
            )


@contextmanager
def heartbeat(renew: Callable[[], None]) -> Iterator[None]:
    """Call `renew` every RUNNER_LEASE / 3 seconds from a thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(settings.RUNNER_LEASE / 3):
                renew()
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _lease_names(kind: str) -> list[str]:
    return [f"{kind}:{i}" for i in range(max(1, settings.PIPELINE_RUNNERS))]


@contextmanager
def running(kind: str) -> Iterator[Runner | None]:
    """Take a free lease of this kind, or succeed a runner that asked for a successor (None
    if neither), and keep it renewed."""
    names = _lease_names(kind)
    held = next(((n, t) for n in names if (t := Lease.take(n, settings.RUNNER_LEASE))), None)
    if held is None:
        held = next(((n, t) for n in names if (t := _succeed(n))), None)
    if held is None:
        yield None
        return
    runner = Runner(kind, *held)
    try:
        with heartbeat(runner.renew):
            yield runner
    finally:
        Lease.release(runner.name, runner.token, settings.RUNNER_LEASE)


def _succeed(name: str) -> str | None:
    """Wait for the holder to hand this lease over (it looks every RUNNER_LEASE / 3 seconds),
    or take it if the holder died meanwhile."""
    token = Lease.succeed(name)
    if token is None:
        return None
    until = time.monotonic() + 2 * settings.RUNNER_LEASE
    while time.monotonic() < until:
        if Lease.held_by(name, token):
            return token
        if taken := Lease.take(name, settings.RUNNER_LEASE):
            return taken
        time.sleep(0.02)
    return None


def wake(kind: str) -> bool:
    """Send a runner's message unless all its leases are held or one was just sent."""
    for name in _lease_names(kind):
        if Lease.request(name, within=settings.RUNNER_LEASE):
            async_task(RUNNERS[kind], task_name=kind)
            return True
    return False


def wake_submission() -> None:
    """Called when generations are queued (a post, a retry, a resume)."""
    wake("submit")


def release_over_budget() -> None:
    """Limits were changed (in the admin): work held over its owner's budget that fits now
    goes back in line and is sent."""
    if Generation.objects.release_fitting_holds():
        wake_submission()


# Submission


def has_submission_work(now) -> bool:
    """Queued work that may be sent soon; while paused, only when the next probe is due
    within a turn (a later probe is sent by the next reconcile)."""
    account = ProviderAccount.get()
    turn = timedelta(seconds=settings.RUNNER_SECONDS)
    if account.is_paused and account.probe_at and account.probe_at > now + turn:
        return False
    soon = now + timedelta(seconds=2)
    return (
        Generation.objects.ready(soon).exists() or Generation.objects.stale_submitting(now).exists()
    )


def submit_queued() -> None:
    """Send queued generations while slots are free, paced under the tier's create rate."""
    with running("submit") as runner:
        if runner is None:
            return
        client = provider.get_client()
        batch_size = max(1, round(settings.AIGPTIMAGE_CREATE_RATE))
        with ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="submit") as pool:
            while runner.keeps_going():
                now = timezone.now()
                batch = Generation.objects.claim_for_submission(now, batch_size)
                if batch:
                    runner.hold(g.pk for g, _ in batch)
                    send_batch(batch, client, pool, runner)
                    continue
                if not has_submission_work(now):
                    break
                runner.pause(_submit_pause(now))
    if has_submission_work(timezone.now()):
        wake("submit")


def _submit_pause(now) -> float:
    """Until the create clock allows the next send, or a short while for a slot to free."""
    account = ProviderAccount.get()
    if account.create_not_before and account.create_not_before > now:
        return min(1.0, (account.create_not_before - now).total_seconds())
    return 0.1


def send_batch(
    batch: list[tuple[Generation, datetime]],
    client: provider.ProviderClient,
    pool: ThreadPoolExecutor,
    runner: Runner,
) -> list[SubmitOutcome]:
    """Send each claimed generation at its reserved time, HTTP in threads; record each answer
    here as it comes, between sends. After a 409, 429 or pause, the rest go back unsent."""
    pending: list[tuple[Generation, Future]] = []
    outcomes: list[SubmitOutcome] = []
    woken = False
    grace = max(0.05, 0.5 / settings.AIGPTIMAGE_CREATE_RATE)  # half a send's spacing

    def record(block: bool) -> None:
        nonlocal woken
        for item in [p for p in pending if block or p[1].done()]:
            generation, future = item
            pending.remove(item)
            outcomes.append(apply_submission(generation, future.result()))
            runner.let_go([generation.pk])
            if outcomes[-1] is SubmitOutcome.ACCEPTED and not woken:
                # Polling starts as soon as the first task is accepted.
                wake("poll")
                woken = True

    for generation, reserved in batch:
        send_at = reserved
        while True:
            record(block=False)
            now = timezone.now()
            if (now - send_at).total_seconds() > grace:
                # This worker got to it late (a loaded machine): sent now, it could share one
                # second with the sends reserved after it and draw a 429. It takes a fresh
                # time at the end of the schedule instead.
                send_at = ProviderAccount.reserve_late_send(now)
            wait = (send_at - timezone.now()).total_seconds()
            if wait <= 0 or SubmitOutcome.HOLD in outcomes:
                break
            time.sleep(min(wait, 0.005) if pending else wait)
        if SubmitOutcome.HOLD in outcomes:
            generation.requeue()
            runner.let_go([generation.pk])
            continue
        pending.append((generation, pool.submit(_create_task, client, generation)))
    record(block=True)
    return outcomes


def _create_task(client: provider.ProviderClient, generation: Generation) -> str | Exception:
    try:
        return client.create_task(
            generation.prompt,
            aspect_ratio=generation.aspect_ratio,
            resolution=generation.resolution,
            output_format=generation.output_format,
            request_id=str(generation.request_id),
        )
    except Exception as e:  # every failure is an outcome, decided in apply_submission
        return e
    finally:
        close_old_connections()


def apply_submission(generation: Generation, result: str | Exception) -> SubmitOutcome:
    """Record one createTask answer (a task id or the error it raised)."""
    account = ProviderAccount.get()
    if isinstance(result, str):
        if account.is_paused:
            account.resume()
        generation.mark_submitted(result)
        return SubmitOutcome.ACCEPTED
    error = result
    if isinstance(error, provider.Conflict):
        # The provider's active-task slots are full (perhaps by another client of the same
        # key). Not a failure: the generation waits its turn.
        generation.requeue()
        account.wait_before_create(settings.AIGPTIMAGE_CONFLICT_WAIT)
        log.info("createTask 409 for generation %s: slots full, kept queued", generation.pk)
        return SubmitOutcome.HOLD
    if isinstance(error, provider.RateLimited):
        generation.requeue()
        account.wait_before_create(error.retry_after)
        log.info("createTask 429: waiting %.1f s as told", error.retry_after)
        return SubmitOutcome.HOLD
    if isinstance(error, provider.Unauthorized | provider.InsufficientCredits):
        generation.requeue()
        account.pause(error)
        return SubmitOutcome.HOLD
    if isinstance(error, provider.BadRequest | provider.ValidationFailed):
        message = plain_message(
            "The image service turned this request down, so no image was made. Try changing "
            "the prompt or the settings.",
            error.said,
        )
        generation.mark_failed(message, str(error.code))
        return SubmitOutcome.FAILED
    attempt = generation.submit_attempts + 1
    if isinstance(error, provider.ProviderError):
        message = plain_message(
            "The image service kept failing, so we stopped trying. Nothing was charged twice; "
            "press Retry when it is back.",
            error.said,
        )
        code = str(error.code or "error")
        log.warning("createTask failed for %s (%s), try %d", generation.pk, error, attempt)
    else:
        message = (
            "Something went wrong on our side while sending this request, so it was given "
            "up. Nothing was charged twice; retry to try again."
        )
        code = "error"
        log.error("createTask for %s raised", generation.pk, exc_info=error)
    if attempt >= settings.AIGPTIMAGE_RETRY_ATTEMPTS:
        generation.mark_failed(message, code)
        return SubmitOutcome.FAILED
    generation.requeue(
        retry_in=backoff(attempt, settings.AIGPTIMAGE_RETRY_BASE), count_attempt=True
    )
    return SubmitOutcome.RETRY


# Polling


def has_poll_work(now) -> bool:
    """Tasks at the provider, or downloads to hand over within a few seconds."""
    soon = now + timedelta(seconds=5)
    return (
        Generation.objects.polling().exists() or Generation.objects.due_for_download(soon).exists()
    )


def poll_due() -> None:
    """Poll every generation whose poll is due, within the site's query budget."""
    with running("poll") as runner:
        if runner is None:
            return
        client = provider.get_client()
        # Small batches, a fifth of a second of the budget each, so that no one-second window
        # sees much more than the budget however the batches fall.
        batch_size = max(1, settings.AIGPTIMAGE_POLL_BUDGET // 5)
        with ThreadPoolExecutor(POLL_THREADS, thread_name_prefix="poll") as pool:
            while runner.keeps_going():
                now = timezone.now()
                fail_overdue(now)
                batch = Generation.objects.claim_due_polls(now, batch_size)
                if batch:
                    runner.hold(g.pk for g in batch)
                    records = pool.map(lambda g: _fetch_record(client, g.task_id), batch)
                    for generation, record in zip(batch, records, strict=True):
                        apply_poll(generation, record)
                    runner.let_go(g.pk for g in batch)
                hand_over_downloads(timezone.now())  # those just found finished too
                if batch:
                    continue
                if not has_poll_work(now):
                    break
                runner.pause(_poll_pause(now))
    if has_poll_work(timezone.now()):
        wake("poll")


def _poll_pause(now) -> float:
    """Until the next poll is due or the budget has room, but never long, so that newly
    accepted tasks and downloads to hand over are picked up quickly."""
    waits = [1.0]
    account = ProviderAccount.get()
    if account.query_not_before and account.query_not_before > now:
        waits.append((account.query_not_before - now).total_seconds())
    next_due = (
        Generation.objects.polling()
        .exclude(next_poll_at__isnull=True)
        .order_by("next_poll_at")
        .values_list("next_poll_at", flat=True)
        .first()
    )
    if next_due is not None:
        waits.append((next_due - now).total_seconds())
    return max(0.01, min(waits))


def fail_overdue(now) -> None:
    cutoff = now - timedelta(seconds=settings.AIGPTIMAGE_TASK_DEADLINE)
    for generation in Generation.objects.polling().unleased(now).filter(submitted_at__lt=cutoff):
        generation.mark_abandoned(
            "The image service took too long and the request was given up. Retry to try again.",
            "timeout",
        )


def _fetch_record(client: provider.ProviderClient, task_id: str) -> provider.TaskRecord | Exception:
    try:
        return client.get_task(task_id)
    except Exception as e:  # every failure is an outcome, decided in apply_poll
        return e


def apply_poll(generation: Generation, outcome: provider.TaskRecord | Exception) -> PollOutcome:
    """Apply one poll's outcome."""
    if isinstance(outcome, provider.TaskRecord):
        if outcome.succeeded:
            generation.mark_succeeded(outcome)
            return PollOutcome.SUCCEEDED
        if outcome.failed:
            generation.mark_provider_failed(outcome)
            return PollOutcome.FAILED
        generation.record_poll(outcome)
        return PollOutcome.PENDING
    error = outcome
    if isinstance(error, provider.TaskNotFound):
        generation.mark_abandoned(
            "The image service no longer knows this request, so its image cannot be fetched. "
            "Retry to make it again.",
            "404",
        )
        return PollOutcome.FAILED
    if isinstance(error, provider.RateLimited):
        ProviderAccount.get().wait_before_query(error.retry_after)
        generation.record_poll_error(error.retry_after, count=False)
        return PollOutcome.HOLD
    if isinstance(error, provider.Unauthorized | provider.InsufficientCredits):
        ProviderAccount.get().pause(error)
        generation.record_poll_error(settings.AIGPTIMAGE_PAUSE_PROBE, count=False)
        return PollOutcome.HOLD
    if isinstance(error, provider.BadRequest | provider.ValidationFailed):
        message = plain_message(
            "The image service stopped this request, so no image was made. Press Retry to "
            "try again.",
            error.said,
        )
        generation.mark_abandoned(message, str(error.code or "error"))
        return PollOutcome.FAILED
    attempt = generation.poll_errors + 1
    if isinstance(error, provider.ProviderError):
        message = plain_message(
            "The image service kept failing while we checked on this image, so we stopped. "
            "Press Retry to make it again.",
            error.said,
        )
        code = str(error.code or "error")
    else:
        message = (
            "Something went wrong on our side while checking on this image. Press Retry to "
            "make it again."
        )
        code = "error"
        log.error("Polling generation %s raised", generation.pk, exc_info=error)
    if attempt >= settings.AIGPTIMAGE_RETRY_ATTEMPTS:
        generation.mark_abandoned(message, code)
        return PollOutcome.FAILED
    generation.record_poll_error(backoff(attempt, settings.AIGPTIMAGE_RETRY_BASE))
    return PollOutcome.RETRY


@functools.cache
def _broker():
    """This process's connection to django-q2's broker (the database or Redis)."""
    return get_broker()


def hand_over_downloads(now) -> int:
    """Send a download task for each download that is due (just finished, past its backoff,
    or left by a dead worker), but keep the queue short: the runners' own messages (a
    successor, a wake-up) must not wait behind a backlog of downloads. What is not sent now
    stays due in the database and goes on a later turn."""
    room = min(DOWNLOAD_HANDOVER_BATCH, settings.DOWNLOAD_QUEUE_MAX - _broker().queue_size())
    if room <= 0:
        return 0
    handed = 0
    due = Generation.objects.due_for_download(now).order_by("retry_at").values_list("pk", flat=True)
    for pk in list(due[:room]):
        # Compare-and-set, so that two runners never send the same download twice.
        taken = (
            Generation.objects.due_for_download(now)
            .filter(pk=pk)
            .update(retry_at=None, lease_until=None, updated_at=now)
        )
        if taken:
            async_task("gallery.tasks.download_images", pk, task_name="download")
            handed += 1
    return handed


# Downloading


def download_images(generation_id: int) -> DownloadOutcome:
    """Fetch, check and store every result of one generation that is not stored yet."""
    generation = Generation.objects.downloading().filter(pk=generation_id).first()
    if generation is None or not generation.claim_download(settings.RUNNER_LEASE):
        return DownloadOutcome.SKIPPED
    with heartbeat(lambda: generation.renew_lease(settings.RUNNER_LEASE)):
        try:
            store_results(generation)
        except provider.ResultGone:
            generation.mark_failed(
                "The finished image expired at the image service before it could be saved. "
                "Retry to make it again.",
                "expired",
            )
            return DownloadOutcome.FAILED
        except provider.ResultRefused as e:
            generation.mark_failed(f"{e.message} Retry to make it again.", "refused")
            return DownloadOutcome.FAILED
        except provider.ResultUnavailable as e:
            return _retry_download(generation, e.message, unexpected=False)
        except Exception:
            log.exception("Download for generation %s raised", generation.pk)
            return _retry_download(generation, "", unexpected=True)
    generation.mark_done()
    return DownloadOutcome.DONE


def _retry_download(generation: Generation, reason: str, *, unexpected: bool) -> DownloadOutcome:
    """Try again later. A file host that is down is waited out while the result URLs may
    still be valid; an unexpected error fails the generation after DOWNLOAD_ATTEMPTS tries."""
    attempt = generation.download_attempts + 1
    now = timezone.now()
    if unexpected and attempt >= settings.DOWNLOAD_ATTEMPTS:
        generation.mark_failed(
            "The finished image could not be saved because of an error on our side. "
            "Retry to make it again.",
            "download",
        )
        return DownloadOutcome.FAILED
    if not generation.result_may_be_valid(now):
        generation.mark_failed(
            f"The finished image could not be fetched before it expired. {reason} "
            "Retry to make it again.",
            "download",
        )
        return DownloadOutcome.FAILED
    wait = backoff(attempt, settings.AIGPTIMAGE_RETRY_BASE, cap=settings.DOWNLOAD_RETRY_MAX)
    generation.record_download_error(wait)
    log.warning(
        "Download for generation %s failed (%s); try %d again in %.1f s",
        generation.pk,
        reason or "error",
        attempt,
        wait,
    )
    return DownloadOutcome.RETRY


def store_results(generation: Generation) -> None:
    """Every result URL not stored yet, within one wall-clock deadline for all of them."""
    deadline = time.monotonic() + settings.DOWNLOAD_DEADLINE
    stored = set(generation.images.values_list("index", flat=True))
    for index, url in enumerate(generation.result_urls[: settings.AIGPTIMAGE_MAX_RESULT_URLS]):
        if index in stored:
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise provider.ResultUnavailable("the download took too long")
        with tempfile.TemporaryFile() as out:
            provider.fetch_result(
                url,
                out,
                allowed_hosts=settings.AIGPTIMAGE_RESULT_HOSTS_ALLOWED,
                max_bytes=settings.DOWNLOAD_MAX_BYTES,
                deadline=left,
            )
            store_image(generation, index, out)


def store_image(generation: Generation, index: int, data: File | object) -> Image:
    """Check one downloaded file and store it with its thumbnails."""
    data.seek(0)
    result = provider.open_result_image(
        data,
        output_format=generation.output_format,
        aspect_ratio=generation.aspect_ratio,
        resolution=generation.resolution,
        max_pixels=settings.IMAGE_MAX_PIXELS,
    )
    data.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := data.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    image = Image(
        generation=generation,
        index=index,
        width=result.width,
        height=result.height,
        bytes=size,
        format=result.format,
        sha256=digest.hexdigest(),
    )
    data.seek(0)
    image.file.save(f"original.{image.extension}", File(data), save=False)
    image.make_thumbnails(result.picture)
    try:
        image.save()
    except IntegrityError:
        # A second run of this task stored the same image first: keep theirs, drop ours.
        image.file.delete(save=False)
        image.thumbnail.delete(save=False)
        image.thumbnail_large.delete(save=False)
        return Image.objects.get(generation=generation, index=index)
    return image


# Repair


def reconcile(wait_for_leases: bool = False) -> None:
    """Scheduled every minute, and sent when a worker starts: move on anything stuck.

    With `wait_for_leases` (a worker has just started, perhaps after a crash), runner leases
    that a dead runner still holds are waited out, so its work resumes within seconds.
    """
    now = timezone.now()
    # A worker died between claiming and recording the answer. Sending again is safe: the
    # same X-Request-ID returns the task the provider may already have made.
    Generation.objects.stale_submitting(now).update(
        status=Generation.Status.QUEUED, lease_until=None, updated_at=now
    )
    Generation.objects.polling().filter(next_poll_at__isnull=True).update(next_poll_at=now)
    # A download whose queue message was lost (a Redis broker that crashed).
    Generation.objects.downloading().filter(
        lease_until__isnull=True, retry_at__isnull=True, updated_at__lt=now - timedelta(minutes=1)
    ).update(retry_at=now)
    hand_over_downloads(now)
    # Work held over its owner's budget goes back in line once the budget has room (the month
    # renewed, or the budget was raised and the admin's wake-up was lost).
    Generation.objects.release_fitting_holds()
    work = {"submit": has_submission_work(now), "poll": has_poll_work(now)}
    for kind, needed in work.items():
        if needed and not wake(kind) and wait_for_leases:
            _wake_when_lapsed(kind)


def prune() -> int:
    """Scheduled daily: delete what is only kept for a while. How many rows went."""
    deleted, _ = Post.objects.expired().delete()
    return deleted


def _wake_when_lapsed(kind: str) -> None:
    expiries = [Lease.expiry(name) for name in _lease_names(kind)]
    now = timezone.now()
    soonest = min((e for e in expiries if e is not None), default=now)
    wait = (soonest - now).total_seconds()
    if 0 < wait <= settings.RUNNER_LEASE:
        time.sleep(wait + 0.1)
        wake(kind)


def on_worker_start(**kwargs) -> None:
    """django-q2's post_spawn: a worker (re)started, maybe after a crash; repair at once."""
    try:
        if Lease.request("reconcile", within=settings.RUNNER_LEASE):
            async_task("gallery.tasks.reconcile", True, task_name="reconcile")
    finally:
        close_old_connections()
