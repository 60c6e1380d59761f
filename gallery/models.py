from __future__ import annotations

import logging
import random
import secrets
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import models, transaction
from django.db.models import Count, F, Min, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator

from gallery import provider

log = logging.getLogger(__name__)


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


class ProviderAccount(models.Model):
    """The one row that every web process and worker shares about the provider account.

    It is the circuit breaker (401/402 pause all submission), remembers how long a 429 asked us
    to wait, holds the poll sweep's lease, and is the row that submission locks so that two
    workers never both take the last free slot.
    """

    class PauseReason(models.TextChoices):
        NONE = "", "Not paused"
        UNAUTHORIZED = "unauthorized", "API key rejected"
        NO_CREDITS = "no_credits", "Out of credits"

    pause_reason = models.CharField(max_length=20, choices=PauseReason.choices, blank=True)
    pause_message = models.TextField(blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    probe_at = models.DateTimeField(null=True, blank=True)
    create_not_before = models.DateTimeField(null=True, blank=True)
    query_not_before = models.DateTimeField(null=True, blank=True)
    sweep_lease = models.CharField(max_length=32, blank=True)
    sweep_lease_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "provider account"

    def __str__(self) -> str:
        return f"Provider account ({self.get_pause_reason_display()})"

    @classmethod
    def get(cls) -> ProviderAccount:
        account, _ = cls.objects.get_or_create(pk=1)
        return account

    @classmethod
    def locked(cls) -> ProviderAccount:
        """The row, locked until the end of the current transaction (PostgreSQL)."""
        cls.objects.get_or_create(pk=1)
        return cls.objects.select_for_update().get(pk=1)

    @property
    def is_paused(self) -> bool:
        return bool(self.pause_reason)

    @property
    def user_message(self) -> str:
        if self.pause_reason == self.PauseReason.NO_CREDITS:
            return (
                "Image generation is paused: the image service account has run out of credits. "
                "Your requests are saved and will start on their own once credits are added."
            )
        return (
            "Image generation is paused: the image service does not accept our access key. "
            "Your requests are saved and will start on their own once that is fixed."
        )

    def pause(self, error: provider.ProviderError) -> None:
        reason = (
            self.PauseReason.NO_CREDITS
            if isinstance(error, provider.InsufficientCredits)
            else self.PauseReason.UNAUTHORIZED
        )
        now = timezone.now()
        updated = ProviderAccount.objects.filter(pk=self.pk).update(
            pause_reason=reason,
            pause_message=error.message,
            paused_at=now,
            probe_at=now + timedelta(seconds=settings.AIGPTIMAGE_PAUSE_PROBE),
        )
        if updated and not self.is_paused:
            log.error("Submission paused (%s): the provider said %r", reason, error.message)
        self.refresh_from_db()

    def resume(self) -> None:
        if self.is_paused:
            log.warning("Submission resumed: the provider accepts the key again")
        ProviderAccount.objects.filter(pk=self.pk).update(
            pause_reason="", pause_message="", paused_at=None, probe_at=None
        )
        self.refresh_from_db()

    def wait_before_create(self, seconds: float) -> None:
        until = timezone.now() + timedelta(seconds=seconds)
        ProviderAccount.objects.filter(pk=self.pk).update(create_not_before=until)
        self.create_not_before = until

    def wait_before_query(self, seconds: float) -> None:
        until = timezone.now() + timedelta(seconds=seconds)
        ProviderAccount.objects.filter(pk=self.pk).update(query_not_before=until)
        self.query_not_before = until

    def may_create(self, now: datetime) -> bool:
        """Whether a createTask may go now; while paused, one probe per AIGPTIMAGE_PAUSE_PROBE."""
        if self.create_not_before and self.create_not_before > now:
            return False
        if self.is_paused:
            return self.probe_at is None or self.probe_at <= now
        return True

    def may_query(self, now: datetime) -> bool:
        return not (self.query_not_before and self.query_not_before > now)

    def take_sweep_lease(self, seconds: float) -> str | None:
        """Compare-and-set on the lease so that only one poll sweep runs at a time."""
        now = timezone.now()
        token = uuid.uuid4().hex
        taken = (
            ProviderAccount.objects.filter(pk=self.pk)
            .filter(Q(sweep_lease_until__isnull=True) | Q(sweep_lease_until__lt=now))
            .update(sweep_lease=token, sweep_lease_until=now + timedelta(seconds=seconds))
        )
        return token if taken else None

    def renew_sweep_lease(self, token: str, seconds: float) -> bool:
        """Extend a held lease; False if it was lost (expired and taken by another sweep)."""
        until = timezone.now() + timedelta(seconds=seconds)
        return bool(
            ProviderAccount.objects.filter(pk=self.pk, sweep_lease=token).update(
                sweep_lease_until=until
            )
        )

    def release_sweep_lease(self, token: str) -> None:
        ProviderAccount.objects.filter(pk=self.pk, sweep_lease=token).update(
            sweep_lease="", sweep_lease_until=None
        )

    def sweep_is_running(self) -> bool:
        self.refresh_from_db(fields=["sweep_lease_until"])
        return bool(self.sweep_lease_until and self.sweep_lease_until >= timezone.now())


class GenerationQuerySet(models.QuerySet):
    def owned_by(self, user) -> GenerationQuerySet:
        return self.filter(owner=user)

    def queued(self) -> GenerationQuerySet:
        return self.filter(status=Generation.Status.QUEUED)

    def ready(self, now: datetime) -> GenerationQuerySet:
        """Queued and not asked to wait (after a 500 or a timeout)."""
        return self.queued().filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))

    def in_flight(self) -> GenerationQuerySet:
        """Generations that hold one of the provider's active-task slots."""
        return self.filter(status__in=Generation.IN_FLIGHT)

    def polling(self) -> GenerationQuerySet:
        return self.filter(status__in=Generation.AT_PROVIDER)

    def due_for_poll(self, now: datetime) -> GenerationQuerySet:
        return self.polling().filter(next_poll_at__lte=now)

    def downloading(self) -> GenerationQuerySet:
        return self.filter(status=Generation.Status.DOWNLOADING)

    def due_for_download(self, now: datetime) -> GenerationQuerySet:
        return self.downloading().filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))

    def pending(self) -> GenerationQuerySet:
        return self.exclude(status__in=Generation.FINISHED)

    def finished(self) -> GenerationQuerySet:
        return self.filter(status__in=Generation.FINISHED)

    def search(self, text: str) -> GenerationQuerySet:
        return self.filter(prompt__icontains=text) if text else self

    def with_status(self, status: str) -> GenerationQuerySet:
        """Filter by the gallery's status groups: pending, done or failed."""
        if status == "pending":
            return self.pending()
        if status in (Generation.Status.DONE, Generation.Status.FAILED):
            return self.filter(status=status)
        return self

    def favorites(self) -> GenerationQuerySet:
        return self.filter(is_favorite=True)

    def counts(self) -> dict[str, int]:
        """All the gallery's counters in one query."""
        return self.aggregate(
            total=Count("id"),
            pending=Count("id", filter=~Q(status__in=Generation.FINISHED)),
            done=Count("id", filter=Q(status=Generation.Status.DONE)),
            failed=Count("id", filter=Q(status=Generation.Status.FAILED)),
            favorites=Count("id", filter=Q(is_favorite=True)),
        )

    def delete_with_files(self) -> int:
        """Delete these generations, their images and share links, and then their files."""
        Image.objects.filter(generation__in=self).delete_with_files()
        deleted = self.count()
        self.delete()
        return deleted

    def stuck_submitting(self, now: datetime, after: float) -> GenerationQuerySet:
        return self.filter(
            status=Generation.Status.SUBMITTING,
            submitted_at__lt=now - timedelta(seconds=after),
        )

    def claim_next(self, now: datetime) -> Generation | None:
        """Take the next queued generation for submission, or None if no slot may be used.

        Slots are shared fairly: the owner with the fewest generations in flight goes first,
        and among equals the one whose oldest request waits longest. The provider account row
        is locked (PostgreSQL) or the write lock taken (SQLite, IMMEDIATE) for the whole
        decision, so several workers never take more slots than AIGPTIMAGE_MAX_ACTIVE_TASKS.
        """
        with transaction.atomic():
            account = ProviderAccount.locked()
            if not account.may_create(now):
                return None
            if Generation.objects.in_flight().count() >= settings.AIGPTIMAGE_MAX_ACTIVE_TASKS:
                return None
            waiting = list(
                Generation.objects.ready(now)
                .values("owner")
                .annotate(oldest=Min("created_at"))
                .order_by()
            )
            if not waiting:
                return None
            active = dict(
                Generation.objects.in_flight()
                .values("owner")
                .annotate(n=Count("id"))
                .values_list("owner", "n")
                .order_by()
            )
            owner = min(waiting, key=lambda row: (active.get(row["owner"], 0), row["oldest"]))
            generation = (
                Generation.objects.ready(now)
                .filter(owner=owner["owner"])
                .order_by("created_at", "id")
                .first()
            )
            if generation is None:
                return None
            if account.is_paused:
                # One probe per interval while paused; its answer opens or closes the circuit.
                ProviderAccount.objects.filter(pk=account.pk).update(
                    probe_at=now + timedelta(seconds=settings.AIGPTIMAGE_PAUSE_PROBE)
                )
            generation.status = Generation.Status.SUBMITTING
            generation.submitted_at = now
            generation.save(update_fields=["status", "submitted_at", "updated_at"])
            return generation


class Generation(models.Model):
    """One request of a user (a prompt and its settings) and its provider task."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SUBMITTING = "submitting", "Sending"
        WAITING = "waiting", "Accepted"
        QUEUING = "queuing", "In line"
        GENERATING = "generating", "Generating"
        DOWNLOADING = "downloading", "Saving"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    AT_PROVIDER = (Status.WAITING, Status.QUEUING, Status.GENERATING)
    IN_FLIGHT = (Status.SUBMITTING, *AT_PROVIDER)
    FINISHED = (Status.DONE, Status.FAILED)

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations"
    )
    prompt = models.TextField()
    aspect_ratio = models.CharField(
        max_length=8, choices=_choices(provider.ASPECT_RATIOS), default="auto"
    )
    resolution = models.CharField(
        max_length=4, choices=_choices(provider.RESOLUTIONS), default="1K"
    )
    output_format = models.CharField(
        max_length=4, choices=_choices(provider.OUTPUT_FORMATS), default="png"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    # Sent as X-Request-ID on every createTask try, so a repeated try never makes a second task.
    request_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    task_id = models.CharField(max_length=100, blank=True)
    provider_state = models.CharField(max_length=30, blank=True)
    result_urls = models.JSONField(default=list, blank=True)
    fail_code = models.CharField(max_length=20, blank=True)
    fail_message = models.TextField(blank=True)
    is_favorite = models.BooleanField(default=False)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    provider_created_at = models.DateTimeField(null=True, blank=True)
    provider_completed_at = models.DateTimeField(null=True, blank=True)
    cost_time_ms = models.PositiveIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Bookkeeping for the workers.
    attempts = models.PositiveSmallIntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    last_polled_at = models.DateTimeField(null=True, blank=True)
    poll_count = models.PositiveIntegerField(default=0)
    poll_errors = models.PositiveSmallIntegerField(default=0)

    objects = GenerationQuerySet.as_manager()

    class Meta:
        # Newest first. The id grows with creation and, unlike a timestamp, never ties, so the
        # gallery pages with a keyset on it (WHERE id < cursor) at a cost that stays flat.
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["owner", "-id"], name="gen_owner_newest"),
            models.Index(fields=["owner", "status"], name="gen_owner_status"),
            # The workers: what is due, whoever owns it.
            models.Index(fields=["status", "next_poll_at"], name="gen_status_poll"),
            models.Index(fields=["status", "retry_at"], name="gen_status_retry"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.prompt[:40]}"

    def get_absolute_url(self) -> str:
        return reverse("gallery:detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_pending(self) -> bool:
        return not self.is_finished

    @property
    def status_text(self) -> str:
        """The state in words a user understands."""
        if self.status == self.Status.QUEUED and self.retry_at and self.retry_at > timezone.now():
            return "Queued, will retry shortly"
        return {
            self.Status.QUEUED: "Queued",
            self.Status.SUBMITTING: "Sending to the image service",
            self.Status.WAITING: "Accepted, waiting to start",
            self.Status.QUEUING: "In the image service's queue",
            self.Status.GENERATING: "Generating",
            self.Status.DOWNLOADING: "Saving your image",
            self.Status.DONE: "Done",
            self.Status.FAILED: "Failed",
        }[self.status]

    @property
    def elapsed(self) -> timedelta:
        return (self.finished_at or timezone.now()) - self.created_at

    @property
    def elapsed_text(self) -> str:
        seconds = int(self.elapsed.total_seconds())
        if seconds < 60:
            return f"{seconds} s"
        return f"{seconds // 60} min {seconds % 60:02d} s"

    @property
    def timings(self) -> dict[str, float | None]:
        """Seconds spent waiting (our queue and the provider's), rendering, and in all."""
        total = (self.finished_at - self.created_at).total_seconds() if self.finished_at else None
        rendering = self.cost_time_ms / 1000 if self.cost_time_ms is not None else None
        waiting = total - rendering if total is not None and rendering is not None else None
        return {"waiting": waiting, "rendering": rendering, "total": total}

    @property
    def failure_text(self) -> str:
        return self.fail_message or "The image could not be made."

    # Transitions. Each writes only the fields it owns and guards on the status it expects, so a
    # task that runs twice, or a reconcile racing a worker, cannot move a generation backwards.

    def _transition(self, expected: tuple[str, ...], **fields) -> bool:
        updated = Generation.objects.filter(pk=self.pk, status__in=expected).update(
            updated_at=timezone.now(), **fields
        )
        if updated:
            for name, value in fields.items():
                setattr(self, name, value)
        return bool(updated)

    def requeue(self, *, retry_in: float | None = None, count_attempt: bool = False) -> bool:
        now = timezone.now()
        return self._transition(
            (self.Status.SUBMITTING,),
            status=self.Status.QUEUED,
            retry_at=now + timedelta(seconds=retry_in) if retry_in else None,
            attempts=self.attempts + 1 if count_attempt else self.attempts,
        )

    def mark_submitted(self, task_id: str) -> bool:
        now = timezone.now()
        return self._transition(
            (self.Status.SUBMITTING, self.Status.QUEUED),
            status=self.Status.WAITING,
            task_id=task_id,
            provider_state="waiting",
            retry_at=None,
            next_poll_at=now + timedelta(seconds=settings.AIGPTIMAGE_POLL_INTERVAL),
        )

    def mark_failed(self, message: str, code: str = "") -> bool:
        return self._transition(
            (*self.IN_FLIGHT, self.Status.QUEUED, self.Status.DOWNLOADING),
            status=self.Status.FAILED,
            fail_code=code,
            fail_message=message,
            finished_at=timezone.now(),
            retry_at=None,
            next_poll_at=None,
        )

    def record_poll(self, record: provider.TaskRecord) -> bool:
        """Apply one recordInfo answer for a pending task."""
        now = timezone.now()
        status = record.state if record.state in self.AT_PROVIDER else self.status
        return self._transition(
            self.AT_PROVIDER,
            status=status,
            provider_state=record.state[:30],
            provider_created_at=record.create_time or self.provider_created_at,
            last_polled_at=now,
            poll_count=self.poll_count + 1,
            poll_errors=0,
            next_poll_at=now + timedelta(seconds=self.poll_interval(now)),
        )

    def record_poll_error(self, retry_in: float, *, count: bool = True) -> bool:
        """Poll again later; `count=False` for waits that are not failures (429, a pause)."""
        now = timezone.now()
        return self._transition(
            self.AT_PROVIDER,
            last_polled_at=now,
            poll_count=self.poll_count + 1,
            poll_errors=self.poll_errors + 1 if count else self.poll_errors,
            next_poll_at=now + timedelta(seconds=retry_in),
        )

    def mark_succeeded(self, record: provider.TaskRecord, download_lease: float) -> bool:
        now = timezone.now()
        return self._transition(
            self.AT_PROVIDER,
            status=self.Status.DOWNLOADING,
            provider_state=record.state,
            result_urls=record.result_urls,
            provider_created_at=record.create_time or self.provider_created_at,
            provider_completed_at=record.complete_time,
            cost_time_ms=record.cost_time_ms,
            last_polled_at=now,
            poll_count=self.poll_count + 1,
            next_poll_at=None,
            attempts=0,
            retry_at=now + timedelta(seconds=download_lease),
        )

    def mark_provider_failed(self, record: provider.TaskRecord) -> bool:
        return self._transition(
            self.AT_PROVIDER,
            status=self.Status.FAILED,
            provider_state=record.state,
            fail_code=record.fail_code or "fail",
            fail_message=record.fail_message or "The image service could not make this image.",
            provider_created_at=record.create_time or self.provider_created_at,
            provider_completed_at=record.complete_time,
            cost_time_ms=record.cost_time_ms,
            finished_at=timezone.now(),
            next_poll_at=None,
        )

    def record_download_error(self, retry_in: float) -> bool:
        return self._transition(
            (self.Status.DOWNLOADING,),
            attempts=self.attempts + 1,
            retry_at=timezone.now() + timedelta(seconds=retry_in),
        )

    def lease_download(self, seconds: float) -> bool:
        return self._transition(
            (self.Status.DOWNLOADING,), retry_at=timezone.now() + timedelta(seconds=seconds)
        )

    def mark_done(self) -> bool:
        return self._transition(
            (self.Status.DOWNLOADING,),
            status=self.Status.DONE,
            finished_at=timezone.now(),
            retry_at=None,
        )

    def retry(self) -> bool:
        """Start a failed generation again as a new provider task (so a new request id).

        Images kept from the failed try (one of several results saved before the others
        expired) go, so that the new task's results are stored in full.
        """
        if self.status != self.Status.FAILED:
            return False
        self.images.all().delete_with_files()
        return self._transition(
            (self.Status.FAILED,),
            status=self.Status.QUEUED,
            request_id=uuid.uuid4(),
            task_id="",
            provider_state="",
            result_urls=[],
            fail_code="",
            fail_message="",
            attempts=0,
            retry_at=None,
            next_poll_at=None,
            poll_count=0,
            poll_errors=0,
            submitted_at=None,
            provider_created_at=None,
            provider_completed_at=None,
            cost_time_ms=None,
            finished_at=None,
        )

    def poll_interval(self, now: datetime) -> float:
        """Poll often at first, then less: a 4K image takes a minute or more."""
        age = (now - (self.submitted_at or now)).total_seconds()
        base = settings.AIGPTIMAGE_POLL_INTERVAL
        return min(settings.AIGPTIMAGE_POLL_MAX_INTERVAL, base * (1 + age / 20))

    def is_past_deadline(self, now: datetime) -> bool:
        started = self.submitted_at or self.created_at
        return (now - started).total_seconds() > settings.AIGPTIMAGE_TASK_DEADLINE


def _delete_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            log.warning("Could not delete %s from storage", name, exc_info=True)


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Capped exponential backoff with full jitter, so many retries do not line up."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, attempt - 1))


def image_upload_to(image: Image, filename: str) -> str:
    return f"images/{image.generation.owner_id}/{uuid.uuid4().hex}{_suffix(filename)}"


def thumbnail_upload_to(image: Image, filename: str) -> str:
    return f"thumbs/{image.generation.owner_id}/{uuid.uuid4().hex}.webp"


def _suffix(filename: str) -> str:
    return "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""


class ImageQuerySet(models.QuerySet):
    def owned_by(self, user) -> ImageQuerySet:
        return self.filter(generation__owner=user)

    def delete_with_files(self) -> None:
        """Delete these images (and their share links), then their files once committed."""
        names = [name for pair in self.values_list("file", "thumbnail") for name in pair if name]
        self.delete()
        transaction.on_commit(lambda: _delete_files(names))


class Image(models.Model):
    """One stored result file of a generation, with its thumbnail."""

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveSmallIntegerField(default=0)
    file = models.FileField(upload_to=image_upload_to, max_length=255)
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveBigIntegerField()
    format = models.CharField(max_length=10)
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ImageQuerySet.as_manager()

    class Meta:
        ordering = ["generation", "index"]
        constraints = [
            models.UniqueConstraint(fields=["generation", "index"], name="image_unique_index")
        ]

    def __str__(self) -> str:
        return f"Image {self.index} of generation {self.generation_id}"

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.format == "JPEG" else f"image/{self.format.lower()}"

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "JPEG" else self.format.lower()


def new_share_token() -> str:
    # 24 random bytes: 192 bits, unrelated to any id, safe in a URL.
    return secrets.token_urlsafe(24)


class ShareLinkQuerySet(models.QuerySet):
    def owned_by(self, user) -> ShareLinkQuerySet:
        return self.filter(image__generation__owner=user)

    def active(self, now: datetime | None = None) -> ShareLinkQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class ShareLink(models.Model):
    """A public, revocable URL to one image."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="share_links")
    token = models.CharField(max_length=64, unique=True, default=new_share_token, editable=False)
    show_prompt = models.BooleanField(default=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    view_count = models.PositiveIntegerField(default=0)
    last_viewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ShareLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Share link for image {self.image_id}"

    def get_absolute_url(self) -> str:
        return reverse("share", args=[self.token])

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return not self.is_revoked and not self.is_expired

    @property
    def preview_title(self) -> str:
        """The title a chat app shows: the prompt only if the owner chose to share it."""
        if self.show_prompt:
            return Truncator(self.image.generation.prompt).chars(70)
        return "An image shared from Banana Gallery"

    @property
    def preview_description(self) -> str:
        if self.show_prompt:
            return Truncator(self.image.generation.prompt).chars(200)
        return "Made with Banana Gallery."

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ShareLink.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
                revoked_at=self.revoked_at
            )

    def record_view(self) -> None:
        ShareLink.objects.filter(pk=self.pk).update(
            view_count=F("view_count") + 1, last_viewed_at=timezone.now()
        )
