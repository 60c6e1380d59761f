from __future__ import annotations

import bisect
import hashlib
import logging
import math
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import NormalDist

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import check_password, make_password
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, models, transaction
from django.db.models import (
    Count,
    ExpressionWrapper,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
    Sum,
)
from django.db.models.functions import Lower
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.dateformat import format as date_format
from django.utils.text import Truncator, slugify
from django.utils.translation import ngettext
from django_ratelimit.core import get_usage
from PIL import Image as PILImage

from gallery import provider
from gallery.provenance import Download, Provenance, UnknownLayout, untouched, with_provenance
from ledger.models import (
    LedgerEntry,
    Standing,
    limit_expression,
    month_range,
    price,
    price_expression,
    spent_expression,
    unsent_expression,
)

log = logging.getLogger(__name__)
# One line per generation that finished or failed: what the terminal of `make run` shows by
# default (banana_site.settings.LOGGING), so that it says what happened without the noise.
outcomes = logging.getLogger("gallery.outcomes")


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


def plain_message(text: str, said: str = "") -> str:
    """A message for the user: `text` in plain words, then what the image service said, if it
    said anything. Its words may follow ours; they are never the whole message, since they are
    often technical ("internal error") and may be in another voice."""
    said = said.strip()
    if not said:
        return text
    return f"{text} The image service said: “{said}”{'' if said[-1] in '.!?' else '.'}"


def wait_words(seconds: int) -> str:
    """About how long a wait is, in words: "about 40 seconds", "about 3 minutes"."""
    if seconds < 60:
        n = max(1, seconds)
        return ngettext("about %(n)d second", "about %(n)d seconds", n) % {"n": n}
    minutes = round(seconds / 60)
    if minutes < 60:
        return ngettext("about %(n)d minute", "about %(n)d minutes", minutes) % {"n": minutes}
    hours = round(seconds / 3600)
    return ngettext("about %(n)d hour", "about %(n)d hours", hours) % {"n": hours}


def request_fingerprint(prompt: str, aspect_ratio: str, resolution: str, output_format: str) -> str:
    """What makes two requests ask for the same image: the prompt with runs of whitespace as one
    space and case folded ("A  Red kite" is "a red kite"), and the same three settings."""
    words = " ".join(prompt.split()).casefold()
    text = "\n".join([words, aspect_ratio, resolution, output_format])
    return hashlib.sha256(text.encode()).hexdigest()


def day_words(day: date) -> str:
    """A day as the pages say it: "1 January"."""
    return date_format(day, "j F")


class ProviderAccount(models.Model):
    """The one row that every web process and worker shares about the provider account.

    It is the circuit breaker (401/402 pause all submission) and holds the two clocks that say
    when the next createTask and the next recordInfo may go: a 429 or a 409 moves them, and so
    does pacing under the tier's rates. Submission locks this row while it claims slots, so
    that the active-task limit holds across every worker of every cluster.
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
        """No createTask for `seconds` (a 409 or a 429), unless a later wait is already set."""
        until = timezone.now() + timedelta(seconds=seconds)
        ProviderAccount.objects.filter(pk=self.pk).filter(
            Q(create_not_before__isnull=True) | Q(create_not_before__lt=until)
        ).update(create_not_before=until)

    def wait_before_query(self, seconds: float) -> None:
        until = timezone.now() + timedelta(seconds=seconds)
        ProviderAccount.objects.filter(pk=self.pk).filter(
            Q(query_not_before__isnull=True) | Q(query_not_before__lt=until)
        ).update(query_not_before=until)

    def may_create(self, now: datetime) -> bool:
        """Whether a createTask may go now; while paused, one probe per AIGPTIMAGE_PAUSE_PROBE."""
        if self.create_not_before and self.create_not_before > now:
            return False
        if self.is_paused:
            return self.probe_at is None or self.probe_at <= now
        return True

    def may_query(self, now: datetime) -> bool:
        return not (self.query_not_before and self.query_not_before > now)

    def reserve_creates(self, now: datetime, count: int) -> list[datetime]:
        """Send times for `count` createTasks, paced at AIGPTIMAGE_CREATE_RATE across the site.

        Call with the row locked. The clock moves past the last reserved time, so the next
        claim (by any worker) continues the same even spacing instead of bursting.
        """
        spacing = timedelta(seconds=1 / settings.AIGPTIMAGE_CREATE_RATE)
        start = max(now, self.create_not_before or now)
        self.create_not_before = start + spacing * count
        ProviderAccount.objects.filter(pk=self.pk).update(create_not_before=self.create_not_before)
        return [start + spacing * i for i in range(count)]

    @classmethod
    def reserve_late_send(cls, now: datetime) -> datetime:
        """A fresh send time for a createTask whose reserved time passed unsent: at the end
        of the site's schedule, so that it never shares a second with sends reserved since."""
        with transaction.atomic():
            return cls.locked().reserve_creates(now, 1)[0]

    def reserve_queries(self, now: datetime, count: int) -> None:
        """Spend `count` recordInfo calls of the site's budget (AIGPTIMAGE_POLL_BUDGET a second)."""
        start = max(now, self.query_not_before or now)
        self.query_not_before = start + timedelta(seconds=count / settings.AIGPTIMAGE_POLL_BUDGET)
        ProviderAccount.objects.filter(pk=self.pk).update(query_not_before=self.query_not_before)


class Lease(models.Model):
    """A named lock that expires unless its holder renews it.

    Each background runner (submission, polling) takes one, so that a bounded number of each
    runs across every worker of every cluster; a runner killed mid-way loses it within
    RUNNER_LEASE seconds. `requested_at` remembers that a runner's queue message was just sent,
    so that a burst of wake-ups sends one message, not one each.

    A runner at the end of its turn with work left hands over without a gap: it asks for a
    successor (`handover_at`) and works on; the successor's task, when a worker starts it,
    writes its token into `successor` and waits; the holder sees it, finishes its batch, and
    its release passes the lease straight to the successor. So a runner never waits in the
    queue behind other tasks (a burst of downloads) while the work it does stands still.
    """

    name = models.CharField(max_length=40, primary_key=True)
    holder = models.CharField(max_length=32, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    handover_at = models.DateTimeField(null=True, blank=True)
    successor = models.CharField(max_length=32, blank=True)

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def _free(now: datetime) -> Q:
        return Q(expires_at__isnull=True) | Q(expires_at__lt=now)

    @classmethod
    def take(cls, name: str, seconds: float) -> str | None:
        """Compare-and-set: the holder's token if the lease was free, else None."""
        cls.objects.get_or_create(name=name)
        now = timezone.now()
        token = uuid.uuid4().hex
        taken = cls.objects.filter(cls._free(now), name=name).update(
            holder=token,
            expires_at=now + timedelta(seconds=seconds),
            requested_at=None,
            handover_at=None,
            successor="",
        )
        return token if taken else None

    @classmethod
    def renew(cls, name: str, token: str, seconds: float) -> bool:
        """Extend a held lease; False if it was lost (it lapsed and another runner took it)."""
        until = timezone.now() + timedelta(seconds=seconds)
        return bool(cls.objects.filter(name=name, holder=token).update(expires_at=until))

    @classmethod
    def release(cls, name: str, token: str, seconds: float) -> None:
        """Let go: to the successor waiting for it, if there is one, else free."""
        now = timezone.now()
        held = cls.objects.filter(name=name, holder=token)
        handed = held.exclude(successor="").update(
            holder=F("successor"),
            successor="",
            handover_at=None,
            requested_at=None,
            expires_at=now + timedelta(seconds=seconds),
        )
        if not handed:
            held.update(holder="", expires_at=None, handover_at=None)

    @classmethod
    def request(cls, name: str, within: float) -> bool:
        """True when the caller should send the runner's message: the lease is free and no
        message went out in the last `within` seconds."""
        cls.objects.get_or_create(name=name)
        now = timezone.now()
        return bool(
            cls.objects.filter(cls._free(now), name=name)
            .filter(
                Q(requested_at__isnull=True) | Q(requested_at__lt=now - timedelta(seconds=within))
            )
            .update(requested_at=now)
        )

    @classmethod
    def ask_successor(cls, name: str, token: str) -> bool:
        """The holder's turn is over: True when the caller should send the successor's
        message (once per turn)."""
        now = timezone.now()
        return bool(
            cls.objects.filter(name=name, holder=token, handover_at__isnull=True).update(
                handover_at=now, requested_at=now
            )
        )

    @classmethod
    def succeed(cls, name: str) -> str | None:
        """Offer to take over a lease whose holder asked for a successor: the successor's
        token, once the holder has handed the lease over to it."""
        token = uuid.uuid4().hex
        now = timezone.now()
        offered = (
            cls.objects.filter(name=name, handover_at__isnull=False, successor="")
            .exclude(cls._free(now))
            .update(successor=token)
        )
        return token if offered else None

    @classmethod
    def successor_waiting(cls, name: str, token: str) -> bool:
        return cls.objects.filter(name=name, holder=token).exclude(successor="").exists()

    @classmethod
    def held_by(cls, name: str, token: str) -> bool:
        return cls.objects.filter(name=name, holder=token).exists()

    @classmethod
    def expiry(cls, name: str) -> datetime | None:
        return cls.objects.filter(name=name).values_list("expires_at", flat=True).first()


def _spent_and_sending(owners: list[int], now: datetime) -> list[tuple[int, int]]:
    """Each owner's credits accepted this month with the price of what is being sent now:
    one aggregate query, so one snapshot (a task accepted meanwhile counts once)."""
    first, after = month_range(timezone.localdate(now))
    sending = unsent_expression(Sum(price_expression()), (Generation.Status.SUBMITTING,))
    return list(
        get_user_model()
        .objects.filter(pk__in=owners)
        .annotate(used=spent_expression(first, after) + sending)
        .values_list("pk", "used")
    )


# A gallery this small is searched prompt by prompt on SQLite (GenerationQuerySet.search):
# about 1 ms at 500 bytes a prompt.
SEARCH_SCAN_ROWS = 2000


class GenerationQuerySet(models.QuerySet):
    def owned_by(self, user) -> GenerationQuerySet:
        return self.filter(owner=user)

    def queued(self) -> GenerationQuerySet:
        return self.filter(status=Generation.Status.QUEUED)

    def ready(self, now: datetime) -> GenerationQuerySet:
        """Queued and not asked to wait (after a 500 or a timeout, or over the owner's
        budget)."""
        return self.queued().filter(
            Q(retry_at__isnull=True) | Q(retry_at__lte=now), over_budget=False
        )

    def over_budget(self) -> GenerationQuerySet:
        """Queued, and waiting until the owner's monthly budget can take them."""
        return self.queued().filter(over_budget=True)

    def in_flight(self) -> GenerationQuerySet:
        """Generations that hold one of the provider's active-task slots."""
        return self.filter(status__in=Generation.IN_FLIGHT)

    def unleased(self, now: datetime) -> GenerationQuerySet:
        return self.filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))

    def polling(self) -> GenerationQuerySet:
        return self.filter(status__in=Generation.AT_PROVIDER)

    def due_for_poll(self, now: datetime) -> GenerationQuerySet:
        return self.polling().filter(next_poll_at__lte=now).unleased(now)

    def downloading(self) -> GenerationQuerySet:
        return self.filter(status=Generation.Status.DOWNLOADING)

    def due_for_download(self, now: datetime) -> GenerationQuerySet:
        """Downloads to hand to a download task: past their backoff, or left by a dead worker."""
        return self.downloading().filter(
            Q(retry_at__lte=now) | Q(lease_until__lt=now),
            Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        )

    def stale_submitting(self, now: datetime) -> GenerationQuerySet:
        """Claimed for submission by a worker that stopped renewing its claim (it died)."""
        return self.filter(status=Generation.Status.SUBMITTING).unleased(now)

    def pending(self) -> GenerationQuerySet:
        return self.filter(unfinished=True)

    def finished(self) -> GenerationQuerySet:
        return self.filter(status__in=Generation.FINISHED)

    def counts(self) -> dict[str, int]:
        """The counters of these generations in one aggregate query: for a collection's page.
        The gallery's own come from GalleryCounts, which costs the same at any size."""
        return self.aggregate(
            total=Count("id"),
            pending=Count("id", filter=~Q(status__in=Generation.FINISHED)),
            done=Count("id", filter=Q(status=Generation.Status.DONE)),
            failed=Count("id", filter=Q(status=Generation.Status.FAILED)),
            favorites=Count("id", filter=Q(is_favorite=True)),
        )

    def search(self, text: str, rows: int | None = None) -> GenerationQuerySet:
        """Generations whose prompt contains `text` (a word, part of one or a phrase), in any
        case, newest first. `rows`: how many generations there are to search (the owner's
        gallery), if known.

        From three characters on, an index answers (gallery.triggers): PostgreSQL's trigram
        index serves `icontains` as it is, its planner choosing when. SQLite's has to be
        chosen here: the FTS5 table drives the query in its rowid (the generation's id)
        order, so that a page stops after its last card whether the text is in every prompt
        or in a few; but it reads the matches of every gallery, so a gallery of up to
        SEARCH_SCAN_ROWS is read prompt by prompt instead, which costs less. Shorter texts
        have no trigram to look up and are always compared prompt by prompt."""
        if not text:
            return self
        small = rows is not None and rows <= SEARCH_SCAN_ROWS
        if connection.vendor != "sqlite" or len(text) < 3 or small:
            return self.filter(prompt__icontains=text)
        phrase = '"' + text.replace('"', '""') + '"'
        return self.filter(prompt_index__prompt__match=phrase).order_by(
            "-prompt_index__generation_id"
        )

    def before(self, cursor: int | None) -> GenerationQuerySet:
        """Those older than generation `cursor`: the keyset of the gallery's pages. A search on
        SQLite bounds the prompt index's rowid too, which its plan reads in order."""
        if cursor is None:
            return self
        if PromptIndex._meta.db_table in self.query.alias_map:
            return self.filter(pk__lt=cursor, prompt_index__generation_id__lt=cursor)
        return self.filter(pk__lt=cursor)

    def with_status(self, status: str) -> GenerationQuerySet:
        """Filter by the gallery's status groups: pending, done or failed."""
        if status == "pending":
            return self.pending()
        if status in (Generation.Status.DONE, Generation.Status.FAILED):
            return self.filter(status=status)
        return self

    def favorites(self) -> GenerationQuerySet:
        return self.filter(is_favorite=True)

    def counts_by_owner(self) -> GenerationQuerySet:
        """The stored counters of GalleryCounts, counted afresh over these rows, per owner."""
        return (
            self.order_by()
            .values("owner")
            .annotate(
                total=Count("id"),
                done=Count("id", filter=Q(status=Generation.Status.DONE)),
                failed=Count("id", filter=Q(status=Generation.Status.FAILED)),
                favorites=Count("id", filter=Q(is_favorite=True)),
            )
            .order_by("owner")
        )

    def delete_with_files(self) -> int:
        """Delete these generations, their images and share links, and then their files.

        Their ledger entries stay: a task still pending is settled as deleted (it was charged
        all the same), and every entry keeps the generation's id."""
        with transaction.atomic():
            ids = list(self.values_list("pk", flat=True))
            LedgerEntry.objects.filter(generation__in=ids).settle(LedgerEntry.Outcome.DELETED)
            Image.objects.filter(generation__in=ids).delete_with_files()
            _, deleted = Generation.objects.filter(pk__in=ids).delete()
        return deleted.get(Generation._meta.label, 0)

    def claim_for_submission(self, now: datetime, limit: int) -> list[tuple[Generation, datetime]]:
        """Claim up to `limit` queued generations for submission, each with its send time.

        Within one transaction that holds the provider account row (PostgreSQL locks it;
        SQLite's IMMEDIATE mode takes the write lock), so the active-task limit holds however
        many workers and clusters claim at once:
        - generations left `submitting` by a dead worker go back to the queue first (sending
          them again is safe: the same X-Request-ID returns the task the provider may have
          made);
        - no more are claimed than AIGPTIMAGE_MAX_ACTIVE_TASKS minus those in flight;
        - slots are shared fairly: each pick goes to the owner with the fewest in flight, and
          among those to the one served longest ago, so ties rotate;
        - send times are paced at AIGPTIMAGE_CREATE_RATE, and while paused only one probe
          goes out per AIGPTIMAGE_PAUSE_PROBE.
        """
        with transaction.atomic():
            account = ProviderAccount.locked()
            Generation.objects.stale_submitting(now).update(
                status=Generation.Status.QUEUED, lease_until=None, updated_at=now
            )
            if not account.may_create(now):
                return []
            free = settings.AIGPTIMAGE_MAX_ACTIVE_TASKS - Generation.objects.in_flight().count()
            limit = min(limit, free, 1 if account.is_paused else limit)
            if limit <= 0:
                return []
            picked = Generation.objects.fair_share(now, limit)
            picked = Generation.objects.fitting_budget(picked, now) if picked else []
            if not picked:
                return []
            if account.is_paused:
                ProviderAccount.objects.filter(pk=account.pk).update(
                    probe_at=now + timedelta(seconds=settings.AIGPTIMAGE_PAUSE_PROBE)
                )
            send_times = account.reserve_creates(now, len(picked))
            lease = timedelta(seconds=settings.RUNNER_LEASE)
            Generation.objects.filter(pk__in=picked).update(
                status=Generation.Status.SUBMITTING, lease_until=now + lease, updated_at=now
            )
            claimed = Generation.objects.in_bulk(picked)
            return [(claimed[pk], at) for pk, at in zip(picked, send_times, strict=True)]

    def fitting_budget(self, picked: list[int], now: datetime) -> list[int]:
        """Those of `picked` (in the order they are to be sent) that their owners' monthly
        budgets can take now: what they spent this month, with what is being sent, and these
        at today's prices. The others are marked over budget and wait, unsent, until the
        budget has room again (`release_fitting_holds`).

        One query for the owners' budgets and, only when some have one, one aggregate query
        for what they spent and are sending, and an UPDATE when some have to wait. Reserving
        keeps every post within the budget, so this holds back only work that no longer fits:
        an admin lowered the budget, or the price table went up, after the post.
        """
        rows = (
            Generation.objects.filter(pk__in=picked)
            .annotate(budget=limit_expression("monthly_credits", "owner"))
            .values_list("pk", "owner", "resolution", "budget")
        )
        found = {pk: rest for pk, *rest in rows}
        picked = [pk for pk in picked if pk in found]
        left = {owner: budget for owner, _, budget in found.values() if budget}
        if not left:  # 0: no monthly limit
            return picked
        for owner, used in _spent_and_sending(list(left), now):
            left[owner] -= used
        fits, held = [], []
        for pk in picked:
            owner, resolution, _ = found[pk]
            cost = settings.PRICE_CREDITS[resolution]
            if owner not in left:
                fits.append(pk)
            elif cost <= left[owner]:
                left[owner] -= cost
                fits.append(pk)
            else:
                held.append(pk)
        if held:
            Generation.objects.filter(pk__in=held).update(over_budget=True, updated_at=now)
        return fits

    def release_fitting_holds(self) -> int:
        """Put generations waiting over their owner's budget back in line where that budget
        now has room for the cheapest of them (it was raised, or the month renewed); the claim
        checks each again. Owners still without room are left alone."""
        held = Generation.objects.over_budget()
        cheapest = (
            held.filter(owner=OuterRef("pk"))
            .order_by()
            .values("owner")
            .annotate(price=Min(price_expression()))
            .values("price")
        )
        owners = (
            get_user_model()
            .objects.filter(pk__in=held.values("owner"))
            .annotate(budget=limit_expression("monthly_credits"), cheapest=Subquery(cheapest))
            .values_list("pk", "budget", "cheapest")
        )
        owners = {pk: (budget, cheapest) for pk, budget, cheapest in owners}
        budgeted = [pk for pk, (budget, _) in owners.items() if budget]
        used = dict(_spent_and_sending(budgeted, timezone.now())) if budgeted else {}
        room = [
            pk
            for pk, (budget, cheapest_price) in owners.items()
            if not budget or budget - used.get(pk, 0) >= cheapest_price
        ]
        if not room:
            return 0
        return held.filter(owner__in=room).update(over_budget=False, updated_at=timezone.now())

    def fair_share(self, now: datetime, limit: int) -> list[int]:
        waiting = set(Generation.objects.ready(now).values_list("owner", flat=True).distinct())
        if not waiting:
            return []
        active = dict(
            Generation.objects.in_flight()
            .filter(owner__in=waiting)
            .values("owner")
            .annotate(n=Count("id"))
            .values_list("owner", "n")
            .order_by()
        )
        served = dict(
            Generation.objects.filter(owner__in=waiting, submitted_at__isnull=False)
            .values("owner")
            .annotate(last=Max("submitted_at"))
            .values_list("owner", "last")
            .order_by()
        )
        never = datetime.min.replace(tzinfo=now.tzinfo)
        queues: dict[int, list[int]] = {}
        picks: list[int] = []
        for _ in range(limit):
            owner = min(waiting, key=lambda o: (active.get(o, 0), served.get(o) or never, o))
            if owner not in queues:
                queues[owner] = list(
                    Generation.objects.ready(now)
                    .filter(owner=owner)
                    .order_by("queued_at", "id")
                    .values_list("pk", flat=True)[:limit]
                )
            if not queues[owner]:
                waiting.discard(owner)
                if not waiting:
                    break
                continue
            picks.append(queues[owner].pop(0))
            active[owner] = active.get(owner, 0) + 1
            served[owner] = now + timedelta(microseconds=len(picks))
        return picks

    def claim_due_polls(self, now: datetime, limit: int) -> list[Generation]:
        """Claim up to `limit` generations whose poll is due, within the site's query budget.

        Rows another worker holds are skipped (`skip_locked` on PostgreSQL), and each claimed
        row gets a lease, so two poll runners never poll the same task at once.
        """
        with transaction.atomic():
            account = ProviderAccount.locked()
            if not account.may_query(now):
                return []
            ids = list(
                Generation.objects.due_for_poll(now)
                .order_by("next_poll_at")
                .select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:limit]
            )
            if not ids:
                return []
            account.reserve_queries(now, len(ids))
            lease = now + timedelta(seconds=settings.RUNNER_LEASE)
            Generation.objects.filter(pk__in=ids).update(lease_until=lease)
            return list(Generation.objects.filter(pk__in=ids).order_by("next_poll_at"))


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
    PENDING = (Status.QUEUED, *IN_FLIGHT, Status.DOWNLOADING)

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
    # Queued, but its owner's monthly budget can no longer take it (an admin lowered it after
    # the post): it is not sent until the budget has room again.
    over_budget = models.BooleanField(default=False)
    # The form post (1-4 variations of one prompt) this generation came from: the gallery shows
    # a post's variations as one group. Empty for a generation made on its own (a re-run).
    post = models.UUIDField(null=True, blank=True, editable=False, db_index=True)
    # Kept by the database from the status, for the partial index of the gallery's "in
    # progress": a condition on a status parameter is one SQLite cannot match to an index's.
    unfinished = models.GeneratedField(
        expression=ExpressionWrapper(Q(status__in=PENDING), output_field=models.BooleanField()),
        output_field=models.BooleanField(),
        db_persist=True,
    )
    # The prompt and settings (request_fingerprint), so that a new post of the same finds the
    # image its owner already has with one indexed query.
    fingerprint = models.CharField(max_length=64, blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now)
    # When this try was queued: at creation, and again at each retry. A card's clock, the
    # timings and the queue's order count from here.
    queued_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # When the provider accepted the task: polling and the task deadline count from here.
    submitted_at = models.DateTimeField(null=True, blank=True)
    provider_created_at = models.DateTimeField(null=True, blank=True)
    provider_completed_at = models.DateTimeField(null=True, blank=True)
    cost_time_ms = models.PositiveIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Bookkeeping for the workers, one field per meaning.
    submit_attempts = models.PositiveSmallIntegerField(default=0)
    poll_count = models.PositiveIntegerField(default=0)
    poll_errors = models.PositiveSmallIntegerField(default=0)
    download_attempts = models.PositiveSmallIntegerField(default=0)
    # When the current step may be tried again after a backoff (queued or downloading).
    retry_at = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    last_polled_at = models.DateTimeField(null=True, blank=True)
    # A worker holds this generation (sending, polling or downloading it) until then.
    lease_until = models.DateTimeField(null=True, blank=True)

    objects = GenerationQuerySet.as_manager()

    class Meta:
        # Newest first. The id grows with creation and, unlike a timestamp, never ties, so the
        # gallery pages with a keyset on it (WHERE id < cursor) at a cost that stays flat.
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["owner", "-id"], name="gen_owner_newest"),
            # The gallery's filters, each read newest first and stopped after a page, however
            # big the gallery: by status, in progress, favourites.
            models.Index(fields=["owner", "status", "-id"], name="gen_owner_status_newest"),
            models.Index(
                fields=["owner", "-id"], condition=Q(unfinished=True), name="gen_owner_pending"
            ),
            models.Index(
                fields=["owner", "-id"], condition=Q(is_favorite=True), name="gen_owner_favorites"
            ),
            models.Index(
                fields=["owner", "status", "-id"],
                condition=Q(is_favorite=True),
                name="gen_owner_favorite_status",
            ),
            models.Index(
                fields=["owner", "fingerprint", "status", "-id"], name="gen_owner_fingerprint"
            ),
            # The workers: what is due, whoever owns it.
            models.Index(fields=["status", "next_poll_at"], name="gen_status_poll"),
            models.Index(fields=["status", "retry_at"], name="gen_status_retry"),
            # Fair share: when each owner was last served.
            models.Index(fields=["owner", "submitted_at"], name="gen_owner_served"),
            # Render-time history per resolution, for the poll schedule.
            models.Index(fields=["resolution", "status", "-id"], name="gen_render_history"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.prompt[:40]}"

    def save(self, *args, **kwargs) -> None:
        self.fingerprint = request_fingerprint(
            self.prompt, self.aspect_ratio, self.resolution, self.output_format
        )
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("gallery:detail", args=[self.pk])

    def variations(self) -> GenerationQuerySet:
        """Every generation of this one's form post, itself included, oldest first; none when
        it was made on its own."""
        if self.post is None:
            return Generation.objects.none()
        return Generation.objects.filter(owner_id=self.owner_id, post=self.post).order_by("id")

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_pending(self) -> bool:
        return not self.is_finished

    @property
    def shape_class(self) -> str:
        """The CSS class of its tile's shape: its image's own ratio once there is one, else
        the ratio asked for (square for "auto")."""
        image = next(iter(self.images.all()), None)
        if image is not None and image.height:
            return image.shape_class
        if self.aspect_ratio in provider.ASPECT_RATIOS and self.aspect_ratio != "auto":
            return "ar-" + self.aspect_ratio.replace(":", "-")
        return "ar-1-1"

    @property
    def meta_text(self) -> str:
        """Its settings and render time in one line, for the viewer's info panel."""
        parts = [self.aspect_ratio, self.resolution, self.output_format.upper()]
        if self.cost_time_ms:
            parts.append(f"rendered in {self.cost_time_ms / 1000:.1f} s")
        parts.append(self.created_at.strftime("%-d %b %Y, %H:%M"))
        return " · ".join(parts)

    @property
    def status_text(self) -> str:
        """The state in words a user understands."""
        if self.status == self.Status.QUEUED and self.over_budget:
            return f"Waiting: over your monthly budget, which renews on {self.renews_words}"
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
    def renews_words(self) -> str:
        return day_words(month_range(timezone.localdate())[1])

    @property
    def over_budget_text(self) -> str:
        """Why it waits, when it is over budget: for its tile."""
        return (
            "Over your monthly budget: it will be sent when the budget renews on "
            f"{self.renews_words}, or when it is raised."
        )

    @property
    def elapsed(self) -> timedelta:
        """Time since this try was queued (a retried generation counts from its retry)."""
        return (self.finished_at or timezone.now()) - self.queued_at

    @property
    def elapsed_text(self) -> str:
        seconds = int(self.elapsed.total_seconds())
        if seconds < 60:
            return f"{seconds} s"
        return f"{seconds // 60} min {seconds % 60:02d} s"

    @property
    def timings(self) -> dict[str, float | None]:
        """Seconds this try spent waiting (our queue and the provider's), rendering, and in all."""
        total = (self.finished_at - self.queued_at).total_seconds() if self.finished_at else None
        rendering = self.cost_time_ms / 1000 if self.cost_time_ms is not None else None
        waiting = total - rendering if total is not None and rendering is not None else None
        return {"waiting": waiting, "rendering": rendering, "total": total}

    @property
    def failure_text(self) -> str:
        return self.fail_message or "The image could not be made."

    # Transitions. Each writes only the fields it owns and guards on the status it expects, so a
    # task that runs twice, or a reconcile racing a worker, cannot move a generation backwards.
    # Counters go up with F() so that two writers never lose a count.

    def _transition(self, expected: tuple[str, ...], **fields) -> bool:
        updated = Generation.objects.filter(pk=self.pk, status__in=expected).update(
            updated_at=timezone.now(), **fields
        )
        if updated:
            plain = {k: v for k, v in fields.items() if not hasattr(v, "resolve_expression")}
            for name, value in plain.items():
                setattr(self, name, value)
            if counted := [k for k in fields if k not in plain]:
                self.refresh_from_db(fields=counted)
        return bool(updated)

    def requeue(self, *, retry_in: float | None = None, count_attempt: bool = False) -> bool:
        """Back to the queue from a claim that did not make a task (a 409, 429, 500 or pause)."""
        fields: dict = {"status": self.Status.QUEUED, "lease_until": None, "retry_at": None}
        if retry_in:
            fields["retry_at"] = timezone.now() + timedelta(seconds=retry_in)
        if count_attempt:
            fields["submit_attempts"] = F("submit_attempts") + 1
        return self._transition((self.Status.SUBMITTING,), **fields)

    def mark_submitted(self, task_id: str) -> bool:
        """The image service accepted the task, and so charged for it: its ledger entry is
        written in the same transaction (once per task, however often this is recorded)."""
        now = timezone.now()
        next_poll_at = now + timedelta(seconds=first_poll_delay(self.resolution))
        with transaction.atomic():
            accepted = self._transition(
                (self.Status.SUBMITTING, self.Status.QUEUED),
                status=self.Status.WAITING,
                task_id=task_id,
                provider_state="waiting",
                submitted_at=now,
                retry_at=None,
                lease_until=None,
                next_poll_at=next_poll_at,
            )
            if accepted:
                LedgerEntry.objects.record_accepted(self, now)
        return accepted

    def mark_failed(self, message: str, code: str = "") -> bool:
        """Failed at any step. A task the image service had accepted (its image could not be
        saved) is settled as failed in the ledger; one that was never accepted has no entry."""
        return self._fail(
            (*self.IN_FLIGHT, self.Status.QUEUED, self.Status.DOWNLOADING),
            LedgerEntry.Outcome.FAILED,
            message,
            code,
        )

    def mark_abandoned(self, message: str, code: str) -> bool:
        """Given up while at the image service, without an end from it (it forgot the task,
        the task passed its deadline, checking on it kept failing). It fails like any other,
        and its ledger entry, charged all the same, is settled as abandoned."""
        return self._fail(self.AT_PROVIDER, LedgerEntry.Outcome.ABANDONED, message, code)

    def _fail(
        self, expected: tuple[str, ...], outcome: str, message: str, code: str, **fields
    ) -> bool:
        with transaction.atomic():
            failed = self._transition(
                expected,
                status=self.Status.FAILED,
                fail_code=code[:20],
                fail_message=message,
                finished_at=timezone.now(),
                retry_at=None,
                next_poll_at=None,
                lease_until=None,
                **fields,
            )
            if failed:
                LedgerEntry.objects.filter(generation=self.pk).settle(outcome, code, message)
        if failed:
            outcomes.info(
                "Generation %s failed after %s (%s): %s",
                self.pk,
                self.elapsed_text,
                code or "no code",
                message,
            )
        return failed

    def record_poll(self, record: provider.TaskRecord) -> bool:
        """Apply one recordInfo answer for a task that is still pending."""
        now = timezone.now()
        status = record.state if record.state in self.AT_PROVIDER else self.status
        return self._transition(
            self.AT_PROVIDER,
            status=status,
            provider_state=record.state[:30],
            provider_created_at=record.create_time or self.provider_created_at,
            last_polled_at=now,
            poll_count=F("poll_count") + 1,
            poll_errors=0,
            lease_until=None,
            next_poll_at=now + timedelta(seconds=self.next_poll_delay(now)),
        )

    def record_poll_error(self, retry_in: float, *, count: bool = True) -> bool:
        """Poll again later; `count=False` for waits that are not failures (429, a pause)."""
        now = timezone.now()
        fields: dict = {
            "last_polled_at": now,
            "poll_count": F("poll_count") + 1,
            "lease_until": None,
            "next_poll_at": now + timedelta(seconds=retry_in),
        }
        if count:
            fields["poll_errors"] = F("poll_errors") + 1
        return self._transition(self.AT_PROVIDER, **fields)

    def mark_succeeded(self, record: provider.TaskRecord) -> bool:
        """The task is done at the provider: due for a download task at once (the poll runner
        hands it over, see tasks.hand_over_downloads)."""
        now = timezone.now()
        return self._transition(
            self.AT_PROVIDER,
            status=self.Status.DOWNLOADING,
            provider_state=record.state,
            result_urls=record.result_urls,
            provider_created_at=record.create_time or self.provider_created_at,
            provider_completed_at=record.complete_time or now,
            cost_time_ms=record.cost_time_ms,
            last_polled_at=now,
            poll_count=F("poll_count") + 1,
            next_poll_at=None,
            lease_until=None,
            retry_at=now,
            download_attempts=0,
        )

    def mark_provider_failed(self, record: provider.TaskRecord) -> bool:
        """The image service says the task failed: so does its ledger entry, with the reason."""
        return self._fail(
            self.AT_PROVIDER,
            LedgerEntry.Outcome.FAILED,
            plain_message("The image service could not make this image.", record.fail_message),
            record.fail_code or "fail",
            provider_state=record.state,
            provider_created_at=record.create_time or self.provider_created_at,
            provider_completed_at=record.complete_time,
            cost_time_ms=record.cost_time_ms,
            poll_count=F("poll_count") + 1,
        )

    def claim_download(self, seconds: float) -> bool:
        """Take this download for `seconds` (renewed while it runs); False if another worker
        holds it, so a download never runs twice at once."""
        now = timezone.now()
        updated = (
            Generation.objects.filter(pk=self.pk, status=self.Status.DOWNLOADING)
            .unleased(now)
            .update(lease_until=now + timedelta(seconds=seconds), retry_at=None, updated_at=now)
        )
        return bool(updated)

    def renew_lease(self, seconds: float) -> None:
        Generation.objects.filter(pk=self.pk).update(
            lease_until=timezone.now() + timedelta(seconds=seconds)
        )

    def record_download_error(self, retry_in: float) -> bool:
        return self._transition(
            (self.Status.DOWNLOADING,),
            download_attempts=F("download_attempts") + 1,
            retry_at=timezone.now() + timedelta(seconds=retry_in),
            lease_until=None,
        )

    def mark_done(self) -> bool:
        """Every image is stored: the ledger entry of its task is settled as done."""
        with transaction.atomic():
            done = self._transition(
                (self.Status.DOWNLOADING,),
                status=self.Status.DONE,
                finished_at=timezone.now(),
                retry_at=None,
                lease_until=None,
            )
            if done:
                LedgerEntry.objects.filter(generation=self.pk).settle(LedgerEntry.Outcome.DONE)
        if done:
            outcomes.info(
                "Generation %s done in %s: %s %s %s",
                self.pk,
                self.elapsed_text,
                self.resolution,
                self.aspect_ratio,
                self.output_format.upper(),
            )
        return done

    def result_may_be_valid(self, now: datetime) -> bool:
        """Whether the provider's result URLs can still work (the family keeps them ~24 h)."""
        completed = self.provider_completed_at or self.updated_at
        return (now - completed).total_seconds() < settings.AIGPTIMAGE_RESULT_TTL

    def rerun(self, *, address: str | None = None) -> Generation:
        """A new generation with the same prompt and settings, within the owner's limits
        (LimitReached if they do not allow it)."""
        with reserve(self.owner, self.resolution, 1, address=address, what="A re-run"):
            return Generation.objects.create(
                owner_id=self.owner_id,
                prompt=self.prompt,
                aspect_ratio=self.aspect_ratio,
                resolution=self.resolution,
                output_format=self.output_format,
            )

    def retry(self, *, address: str | None = None) -> bool:
        """Start a failed generation again as a new provider task (so a new request id),
        within the owner's limits (LimitReached if they do not allow it): a new task is
        charged again.

        Images kept from the failed try (one of several results saved before the others
        expired) go, so that the new task's results are stored in full. One transaction: the
        images go only if the generation really goes back to the queue.
        """
        if self.status != self.Status.FAILED:
            return False
        with reserve(self.owner, self.resolution, 1, address=address, what="A retry"):
            restarted = self._transition(
                (self.Status.FAILED,),
                status=self.Status.QUEUED,
                over_budget=False,
                request_id=uuid.uuid4(),
                task_id="",
                provider_state="",
                result_urls=[],
                fail_code="",
                fail_message="",
                submit_attempts=0,
                download_attempts=0,
                retry_at=None,
                lease_until=None,
                next_poll_at=None,
                last_polled_at=None,
                poll_count=0,
                poll_errors=0,
                queued_at=timezone.now(),
                submitted_at=None,
                provider_created_at=None,
                provider_completed_at=None,
                cost_time_ms=None,
                finished_at=None,
            )
            if restarted:
                self.images.all().delete_with_files()
        return restarted

    def next_poll_delay(self, now: datetime) -> float:
        """Seconds until the next poll: from the learnt schedule for this resolution, or, until
        there is enough history, often at first and then less."""
        age = (now - (self.submitted_at or now)).total_seconds()
        schedule = poll_schedule(self.resolution)
        if schedule is not None:
            # Never within half the latency of this poll: a plan replanned meanwhile may put
            # its next poll just after the one that was made.
            return schedule.next_after(age + settings.AIGPTIMAGE_POLL_LATENCY / 2) - age
        base = settings.AIGPTIMAGE_POLL_INTERVAL
        return min(settings.AIGPTIMAGE_POLL_MAX_INTERVAL, base * (1 + age / 20))

    def is_past_deadline(self, now: datetime) -> bool:
        started = self.submitted_at or self.queued_at
        return (now - started).total_seconds() > settings.AIGPTIMAGE_TASK_DEADLINE


class GalleryCounts(models.Model):
    """The counters above a user's gallery, kept by the database as generations are made,
    change state, are favourited and deleted (triggers, gallery.triggers), so that no page
    counts the rows of a gallery of any size. `manage.py recount_gallery` repairs them."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="gallery_counts",
    )
    # Plain integers, not positive ones: a counter that is off must never make a write fail.
    total = models.IntegerField(default=0)
    done = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    favorites = models.IntegerField(default=0)

    class Meta:
        verbose_name = "gallery counts"
        verbose_name_plural = "gallery counts"

    def __str__(self) -> str:
        return f"Gallery counts of user {self.owner_id}"

    @classmethod
    def of(cls, user) -> dict[str, int]:
        """The user's counters, as the gallery shows them: one read of one row."""
        row = cls.objects.filter(owner=user).values("total", "done", "failed", "favorites")
        counts = row.first() or {"total": 0, "done": 0, "failed": 0, "favorites": 0}
        return {**counts, "pending": counts["total"] - counts["done"] - counts["failed"]}

    @classmethod
    def recount(cls, owner_id: int) -> bool:
        """Count the user's generations afresh, and store the counters if they were off;
        True if they were. Safe while the gallery is in use: the user's counter row is locked
        first, so a generation written meanwhile is counted either here (committed before
        the lock) or by its trigger afterwards (which waits for the lock), never both."""
        fields = ("total", "done", "failed", "favorites")
        with transaction.atomic():
            cls.objects.get_or_create(owner_id=owner_id)
            stored = cls.objects.select_for_update().values(*fields).get(owner_id=owner_id)
            fresh = Generation.objects.filter(owner_id=owner_id).counts_by_owner().first()
            fresh = {k: fresh[k] for k in fields} if fresh else dict.fromkeys(fields, 0)
            if fresh == stored:
                return False
            cls.objects.filter(owner_id=owner_id).update(**fresh)
        return True


class IndexedText(models.TextField):
    """A column of an FTS5 table, which `__match` searches."""


@IndexedText.register_lookup
class Match(models.Lookup):
    """`column__match=query`: an FTS5 full-text query."""

    lookup_name = "match"

    def as_sql(self, compiler, connection) -> tuple[str, list]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} MATCH {rhs}", [*lhs_params, *rhs_params]


class PromptIndex(models.Model):
    """SQLite's FTS5 index of the prompts (gallery.triggers; none on PostgreSQL): a model only
    so that a search can join it, and read it in its own order."""

    generation = models.OneToOneField(
        Generation,
        on_delete=models.DO_NOTHING,
        primary_key=True,
        db_column="rowid",
        db_constraint=False,
        related_name="prompt_index",
    )
    prompt = IndexedText()

    class Meta:
        managed = False
        db_table = "gallery_prompt_index"


class PostQuerySet(models.QuerySet):
    def expired(self, now: datetime | None = None) -> PostQuerySet:
        """Keys older than POST_KEYS_KEPT_DAYS: a form that old sent again is a new post."""
        now = now or timezone.now()
        return self.filter(created_at__lt=now - timedelta(days=settings.POST_KEYS_KEPT_DAYS))


class Post(models.Model):
    """One submission of the composer form, by the random key rendered in it (and given to its
    generations as their `post`). A second submission with the same key (a double click, a
    form sent again from the browser's history, a replay, two web processes at once) finds
    this row and makes nothing. It stays when the generations are deleted, so that a stale
    form sent again does not make them anew, until the daily `prune` takes it out after
    POST_KEYS_KEPT_DAYS."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.UUIDField()
    created_at = models.DateTimeField(default=timezone.now)

    objects = PostQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="post_once")]
        indexes = [models.Index(fields=["created_at"], name="post_created_at")]

    def __str__(self) -> str:
        return f"Post {self.key} of user {self.owner_id}"


class AlreadyPosted(Exception):
    """The post of this key was made already: nothing more is made or counted."""


# Limits on making generations: every way of making one (a post, a re-run, a retry, and any
# later entry point) goes through `reserve`.


class LimitReached(Exception):
    """Generations refused by a limit. `message` says which, what is left and when it renews
    or when to go on; `in_form` says the same under the form, which keeps the prompt. `code`
    names the limit for scripts (the API's error code), and `retry_after` is the seconds until
    the same request would pass, where that is known."""

    def __init__(
        self, message: str, in_form: str = "", *, code: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.in_form = in_form or message
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class RateLimit:
    """One of django-ratelimit's counters of images asked for: per user or per address."""

    group: str
    value: str
    rate: str

    def usage(self, increment: bool = False) -> dict | None:
        # django-ratelimit counts by a key of the request; this one is the value itself, so
        # the counter is the same however the generations are asked for.
        return get_usage(
            None,
            group=self.group,
            key=lambda group, request: self.value,
            rate=self.rate,
            increment=increment,
        )


def rate_limits(user, address: str | None) -> list[RateLimit]:
    limits = [RateLimit("generate", str(user.pk), settings.RATELIMIT_GENERATE)]
    if address:
        limits.append(RateLimit("generate-address", address, settings.RATELIMIT_GENERATE_ADDRESS))
    return [limit for limit in limits if limit.rate]


@contextmanager
def reserve(
    user,
    resolution: str,
    count: int,
    *,
    address: str | None,
    what: str = "This post",
    post: uuid.UUID | None = None,
) -> Iterator[None]:
    """Let the block make `count` generations at `resolution` for `user` if every limit
    allows them, or raise LimitReached with what is left and when it renews:

    - the monthly budget: spent this month (the ledger), with the price of everything not yet
      accepted and of these, at most the budget;
    - the images of the day (tasks accepted today, with those not yet accepted, and these);
    - the generations unfinished at once (queued, being sent, at the image service, saving);
    - the rate limits, per user and per address (`address`: None for none), which count
      images, so that four variations count four.

    The checks and the block are one transaction, with the user's row locked first, so that
    two tabs or two web processes posting at once take turns and the second sees what the
    first made: they cannot overspend together. (SQLite serialises every write transaction
    already: IMMEDIATE.) A refused request makes nothing and counts nothing.

    With `post` (a form's key), AlreadyPosted is raised before any limit is checked when that
    post was made already: under the same lock, so the same form sent twice at once is made
    once, and its second sending counts nothing.
    """
    cost = price(resolution).credits * count
    limits = rate_limits(user, address)
    with transaction.atomic():
        users = get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk)
        list(users.values_list("pk", flat=True))
        if post is not None and not Post.objects.get_or_create(owner=user, key=post)[1]:
            raise AlreadyPosted
        check_allowance(Standing.of(user), count, cost, what)
        check_rates(limits, count)
        yield
        for limit in limits:
            for _ in range(count):
                limit.usage(increment=True)


def check_allowance(standing: Standing, count: int, cost: int, what: str) -> None:
    allowance = standing.allowance
    left = standing.credits_left
    if left is not None and cost > left:
        needs = ngettext("%(what)s needs %(n)s credit", "%(what)s needs %(n)s credits", cost)
        have = f"you have {left:,} left" if left else "you have none left"
        raise LimitReached(
            f"{needs % {'what': what, 'n': f'{cost:,}'}} and {have} this month; your budget "
            f"renews on {day_words(allowance.renews_on)}.",
            code="monthly_budget",
        )
    today = standing.images_left_today
    if today is not None and count > today:
        daily = allowance.daily_generations
        if today:
            text = (
                f"{what} asks for {count} images and you have {today} left today (of {daily}); "
                "ask for fewer, or make more tomorrow."
            )
        else:
            text = ngettext(
                "You have used today's %(n)d image; you can make more tomorrow.",
                "You have used today's %(n)d images; you can make more tomorrow.",
                daily,
            ) % {"n": daily}
        raise LimitReached(text, code="daily_limit")
    room = standing.room
    if room is not None and count > room:
        on_way = ngettext(
            "You have %(n)d image on its way",
            "You have %(n)d images on their way",
            standing.pending,
        ) % {"n": standing.pending}
        text = f"{on_way}, and you can have at most {allowance.max_pending} at once"
        if room:
            text += f": ask for {room} or fewer, or try again when some are done."
        else:
            text += "; try again when some are done."
        raise LimitReached(text, code="too_many_pending")


def check_rates(limits: list[RateLimit], count: int) -> None:
    for limit in limits:
        usage = limit.usage()
        if usage is None or usage["count"] + count <= usage["limit"]:
            continue
        if 0 < usage["limit"] < count:
            raise LimitReached(
                ngettext(
                    "At most %(n)d image can be made in a short time; ask for fewer.",
                    "At most %(n)d images can be made in a short time; ask for fewer.",
                    usage["limit"],
                )
                % {"n": usage["limit"]},
                code="rate_limited",
            )
        # The count starts again when the limit's window ends (django-ratelimit's windows are
        # fixed, so this is when the images can be asked for, not an estimate).
        wait = wait_words(usage["time_left"])
        room = max(0, usage["limit"] - usage["count"])
        if room:
            text = (
                "That is a lot of images in a short time: you can ask for "
                f"{room} more now, or for more in {wait}"
            )
        else:
            text = f"That is a lot of images in a short time. You can generate again in {wait}"
        raise LimitReached(
            f"{text}.",
            f"{text}; your prompt is still here.",
            code="rate_limited",
            retry_after=usage["time_left"],
        )


# The poll schedule, learnt from render times.


@dataclass(frozen=True)
class PollSchedule:
    """When to poll a task, in seconds after the provider accepted it.

    `offsets` come from render times seen for one resolution: the first poll just before the
    earliest renders end, dense where most end, sparser in the tail. After the last offset the
    gaps grow by half each time, up to AIGPTIMAGE_POLL_MAX_INTERVAL.
    """

    offsets: tuple[float, ...]

    def next_after(self, age: float) -> float:
        for offset in self.offsets:
            if offset > age + 0.01:
                return offset
        last = self.offsets[-1]
        gap = self.offsets[-1] - self.offsets[-2] if len(self.offsets) > 1 else last
        cap = settings.AIGPTIMAGE_POLL_MAX_INTERVAL
        while last <= age + 0.01:
            gap = min(cap, gap * 1.5)
            last += gap
        return last


def plan_polls(
    render_seconds: list[float], latency: float, miss: float, max_gap: float
) -> tuple[float, ...]:
    """Poll times that make the fewest polls on average for renders like these, while at most
    a `miss` fraction of them is seen more than `latency` seconds after it ended.

    Dynamic programming on a grid of latency/20 s (coarser for long renders). A poll at t
    after the one at s is made only if the render is still going at s, so it costs the
    fraction of renders longer than s; the renders that end in (s, t - latency] are seen late.
    The state is (poll time, renders seen late so far), so the late budget goes where it
    saves the most polls: before the first poll and in the sparse tail, never where most
    renders end.
    """
    samples = sorted(render_seconds)
    n = len(samples)
    # Fine enough to place polls within a twentieth of the latency, coarse enough that a long
    # 4K render still plans in a fraction of a second.
    step = max(latency / 20, (samples[-1] + latency) / 600)
    grid = [step * i for i in range(int((samples[-1] + latency) / step) + 2)]
    ended = [bisect.bisect_right(samples, t) for t in grid]
    ended_late = [bisect.bisect_right(samples, t - latency) if t > latency else 0 for t in grid]
    budget = int(miss * n)
    reach = max(1, int(max_gap / step))
    size = len(grid)
    # best[i][k]: the fewest expected polls (in renders, not fractions) to poll at grid[i]
    # having seen k renders late.
    best = [[math.inf] * (budget + 1) for _ in range(size)]
    back: list[list[tuple[int, int]]] = [[(0, 0)] * (budget + 1) for _ in range(size)]
    best[0][0] = 0.0
    for i in range(1, size):
        row, links = best[i], back[i]
        # The first poll may come any time after acceptance; later gaps stay under max_gap.
        for j in (0, *range(max(1, i - reach), i)):
            late = max(0, ended_late[i] - ended[j])
            if late > budget:
                continue
            cost = n - ended[j]
            for k, previous in enumerate(best[j][: budget + 1 - late]):
                if previous + cost < row[k + late]:
                    row[k + late] = previous + cost
                    links[k + late] = (j, k)
    # The last poll must come after the longest render seen.
    last = next(i for i in range(size) if ended[i] == n)
    i, k = min(
        ((i, k) for i in range(last, size) for k in range(budget + 1)),
        key=lambda state: best[state[0]][state[1]],
    )
    plan = []
    while i:
        plan.append(grid[i])
        i, k = back[i][k]
    return tuple(round(t, 3) for t in reversed(plan))


def smoothed(render_seconds: list[float], points: int = 3) -> list[float]:
    """A few points around each render time, spread by a log-normal kernel of Silverman's
    width: a plan made on a few hundred renders then holds its latency on the next ones,
    instead of fitting itself to the gaps between the renders it happened to see."""
    logs = [math.log(max(seconds, 0.001)) for seconds in render_seconds]
    if len(logs) < 2:
        return list(render_seconds)
    width = 1.06 * statistics.stdev(logs) * len(logs) ** -0.2
    offsets = [NormalDist().inv_cdf((j + 0.5) / points) * width for j in range(points)]
    return [math.exp(value + offset) for value in logs for offset in offsets]


class PollPlan(models.Model):
    """The poll schedule for one resolution, shared by every worker of every cluster.

    One plan for all, so that a task polled by one process is not polled again a moment later
    by another that planned on a slightly different history. Replanned every PLAN_SECONDS
    once the history is full, sooner while it is short.
    """

    PLAN_SECONDS = 300.0
    RETRY_SECONDS = 15.0  # without enough history, look again soon

    resolution = models.CharField(max_length=8, primary_key=True)
    offsets = models.JSONField(default=list)
    renders = models.PositiveIntegerField(default=0)
    planned_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.resolution}: {len(self.offsets)} polls from {self.renders} renders"

    def is_stale(self, now: datetime) -> bool:
        """A plan made on a short history is replanned sooner: the renders that lengthen it
        make the next plan tighter (a wide history makes polls dense)."""
        if not self.offsets:
            lifetime = self.RETRY_SECONDS
        else:
            share = min(1.0, self.renders / settings.AIGPTIMAGE_POLL_HISTORY)
            lifetime = max(self.RETRY_SECONDS, self.PLAN_SECONDS * share)
        return (now - self.planned_at).total_seconds() > lifetime

    @classmethod
    def current(cls, resolution: str) -> PollPlan:
        """The plan in force, replanned first if it is stale: by the one process that claims
        the replanning; the others go on with the stale plan meanwhile."""
        now = timezone.now()
        plan = cls.objects.filter(pk=resolution).first()
        if plan is not None and not plan.is_stale(now):
            return plan
        if plan is not None:
            # One process replans (planning takes up to a second of CPU); the others keep
            # the plan in force until it writes the new one.
            claimed = cls.objects.filter(pk=resolution, planned_at=plan.planned_at)
            if not claimed.update(planned_at=now):
                return plan
            plan.planned_at = now
        history = list(
            Generation.objects.filter(
                resolution=resolution, status=Generation.Status.DONE, cost_time_ms__isnull=False
            )
            .order_by("-id")
            .values_list("cost_time_ms", flat=True)[: settings.AIGPTIMAGE_POLL_HISTORY]
        )
        offsets: list[float] = []
        if len(history) >= settings.AIGPTIMAGE_POLL_HISTORY_MIN:
            offsets = list(
                plan_polls(
                    smoothed([ms / 1000 for ms in history]),
                    latency=settings.AIGPTIMAGE_POLL_LATENCY,
                    miss=settings.AIGPTIMAGE_POLL_MISS,
                    max_gap=settings.AIGPTIMAGE_POLL_MAX_INTERVAL,
                )
            )
        fields = {"offsets": offsets, "renders": len(history), "planned_at": now}
        if plan is None:
            plan, _ = cls.objects.get_or_create(pk=resolution, defaults=fields)
            return plan
        cls.objects.filter(pk=resolution, planned_at=plan.planned_at).update(**fields)
        return cls.objects.get(pk=resolution)


_plans: dict[str, tuple[float, PollSchedule | None]] = {}
PLAN_MEMO_SECONDS = 2.0


def poll_schedule(resolution: str) -> PollSchedule | None:
    """The schedule for this resolution from the last renders, or None without enough of them.

    The plan lives in the database (PollPlan); each process keeps it for PLAN_MEMO_SECONDS so
    that a batch of polls reads it once.
    """
    memo = _plans.get(resolution)
    if memo is not None and time.monotonic() - memo[0] < PLAN_MEMO_SECONDS:
        return memo[1]
    offsets = PollPlan.current(resolution).offsets
    schedule = PollSchedule(tuple(offsets)) if offsets else None
    _plans[resolution] = (time.monotonic(), schedule)
    return schedule


def forget_poll_plans() -> None:
    """Drop every plan, here and in the database (tests, and a change of settings)."""
    _plans.clear()
    PollPlan.objects.all().delete()


def first_poll_delay(resolution: str) -> float:
    schedule = poll_schedule(resolution)
    return schedule.offsets[0] if schedule is not None else settings.AIGPTIMAGE_POLL_INTERVAL


def aspect_class(ratio: float) -> str:
    """The CSS class (static/css/app.css) of the provider's aspect ratio nearest to `ratio`."""
    known = [r for r in provider.ASPECT_RATIOS if r != "auto"]

    def distance(name: str) -> float:
        width, height = (int(v) for v in name.split(":"))
        return abs(math.log(ratio * height / width))

    return "ar-" + min(known, key=distance).replace(":", "-")


def _delete_files(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except Exception:
            # The rows are gone already (this runs once they are committed): a file left
            # behind is logged, not raised to the request. On disk that is an OSError, on S3
            # one of botocore's errors.
            log.warning("Could not delete %s from storage", name, exc_info=True)


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Capped exponential backoff with full jitter, so many retries do not line up."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, attempt - 1))


PROVENANCE_APP = "Banana Gallery"


def image_upload_to(image: Image, filename: str) -> str:
    return f"images/{image.generation.owner_id}/{uuid.uuid4().hex}{_suffix(filename)}"


def thumbnail_upload_to(image: Image, filename: str) -> str:
    return f"thumbs/{image.generation.owner_id}/{uuid.uuid4().hex}.webp"


def _suffix(filename: str) -> str:
    return "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""


class ImageQuerySet(models.QuerySet):
    def owned_by(self, user) -> ImageQuerySet:
        return self.filter(generation__owner=user)

    def made_from(self, fingerprint: str) -> ImageQuerySet:
        """Images of finished generations of this prompt and these settings
        (request_fingerprint), newest first, each with its generation."""
        return (
            self.filter(
                generation__fingerprint=fingerprint, generation__status=Generation.Status.DONE
            )
            .select_related("generation")
            .order_by("-generation_id", "index")
        )

    def without_large_thumbnails(self) -> ImageQuerySet:
        """Images stored before thumbnails kept the image's shape: `rebuild_thumbnails` remakes
        both of theirs."""
        return self.filter(thumbnail_large="")

    def delete_with_files(self) -> None:
        """Delete these images (and their share links), then their files once committed."""
        fields = self.values_list("file", "thumbnail", "thumbnail_large")
        names = [name for row in fields for name in row if name]
        self.delete()
        transaction.on_commit(lambda: _delete_files(names))


class Image(models.Model):
    """One stored result file of a generation, with its two thumbnails.

    Both thumbnails are WebP in the image's own shape (gallery.provider.thumbnail_size):
    `thumbnail` is THUMBNAIL_HEIGHT tall for the gallery's rows, `thumbnail_large` twice that
    for 2x screens. Images stored before there were two have no large one until
    `manage.py rebuild_thumbnails` makes it.
    """

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveSmallIntegerField(default=0)
    file = models.FileField(upload_to=image_upload_to, max_length=255)
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=255)
    thumbnail_large = models.FileField(upload_to=thumbnail_upload_to, max_length=255, blank=True)
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

    @property
    def shape_class(self) -> str:
        """The CSS class of a tile of this image's shape."""
        return aspect_class(self.width / self.height) if self.height else "ar-1-1"

    @property
    def download_name(self) -> str:
        """The file name its owner downloads it under: the prompt's first words, then which
        generation and which of its images it is."""
        words = slugify(self.generation.prompt[:60]) or "image"
        return f"banana-{words}-{self.generation_id}-{self.index + 1}.{self.extension}"

    @property
    def thumbnail_url(self) -> str:
        """The small thumbnail, THUMBNAIL_HEIGHT px tall (or less, see Image)."""
        return _versioned(reverse("gallery:thumbnail", args=[self.pk]), self.thumbnail.name)

    @property
    def thumbnail_large_url(self) -> str:
        """The large thumbnail, twice as tall; the small one's URL until it is made."""
        if not self.thumbnail_large:
            return self.thumbnail_url
        url = reverse("gallery:thumbnail_large", args=[self.pk])
        return _versioned(url, self.thumbnail_large.name)

    @property
    def thumbnail_srcset(self) -> str:
        """For `<img srcset>`: the small thumbnail at 1x, the large one at 2x."""
        if not self.thumbnail_large:
            return f"{self.thumbnail_url} 1x"
        return f"{self.thumbnail_url} 1x, {self.thumbnail_large_url} 2x"

    def provenance(self, *, public: bool = False) -> Provenance:
        """What a download of this image says about where it came from: all of it for its
        owner; without the task id (a reference to our account at the image service) for a
        share link, which only asks once the owner chose to show the prompt."""
        generation = self.generation
        return Provenance(
            app=PROVENANCE_APP,
            created_at=self.created_at,
            prompt=generation.prompt,
            settings={
                "Model": provider.MODEL,
                "Aspect ratio": generation.aspect_ratio,
                "Resolution": generation.resolution,
                "Format": self.format,
                "Size": f"{self.width}x{self.height}",
            },
            task_id="" if public else generation.task_id,
        )

    def download(self, about: Provenance | None) -> Download:
        """The stored original as a stream, with `about` written into it unless None. The
        original in storage is never changed."""
        fp = self.file.open("rb")
        if about is None:
            return untouched(fp, self.bytes)
        try:
            return with_provenance(fp, self.format, self.bytes, about)
        except UnknownLayout:
            # The pipeline checked the file when it stored it, so this is a file changed in
            # storage since: it is served as it is rather than not at all.
            log.warning("Image %s: %s is not a %s file", self.pk, self.file.name, self.format)
            fp.close()
            return untouched(self.file.open("rb"), self.bytes)

    def make_thumbnails(self, picture: PILImage.Image) -> None:
        """Store both thumbnails of `picture` (this image, decoded) in storage, unsaved."""
        height = settings.THUMBNAIL_HEIGHT
        small, large = provider.make_thumbnails(picture, (height, 2 * height))
        self.thumbnail.save("thumb.webp", ContentFile(small), save=False)
        self.thumbnail_large.save("thumb.webp", ContentFile(large), save=False)

    def rebuild_thumbnails(self) -> bool:
        """Make both thumbnails again from the stored original, and drop the old ones.

        Raises OSError when the original cannot be read. False if the image was deleted
        meanwhile (its new thumbnails are dropped too).
        """
        old = [name for name in (self.thumbnail.name, self.thumbnail_large.name) if name]
        with self.file.open("rb") as fp, PILImage.open(fp) as picture:
            # A JPEG decodes at a fraction of its size when that is all the thumbnails need.
            largest = provider.thumbnail_size(
                self.width, self.height, 2 * settings.THUMBNAIL_HEIGHT
            )
            picture.draft("RGB", largest)
            picture.load()
            self.make_thumbnails(picture)
        fresh = [self.thumbnail.name, self.thumbnail_large.name]
        updated = Image.objects.filter(pk=self.pk).update(
            thumbnail=self.thumbnail.name, thumbnail_large=self.thumbnail_large.name
        )
        gone = old if updated else fresh
        transaction.on_commit(lambda: _delete_files(gone))
        return bool(updated)


def _versioned(url: str, name: str) -> str:
    """The URL with a short mark of the stored file, so that a browser holding an old
    thumbnail in its cache (they are cached for a day) asks again once the file is remade."""
    return f"{url}?v={name.rsplit('/', 1)[-1][:8]}" if name else url


def new_share_token() -> str:
    # 24 random bytes: 192 bits, unrelated to any id, safe in a URL.
    return secrets.token_urlsafe(24)


class CollectionQuerySet(models.QuerySet):
    def owned_by(self, user) -> CollectionQuerySet:
        return self.filter(owner=user)

    def named(self, name: str) -> CollectionQuerySet:
        """The collection of this name, whatever its case (names are unique that way)."""
        return self.filter(name__iexact=name.strip())

    def with_counts(self) -> CollectionQuerySet:
        """Each with `item_count`, and `cover_generation_id`: the generation most recently
        added that has its image (see `covers`). Both in the same one query."""
        newest_done = (
            CollectionItem.objects.filter(
                collection=OuterRef("pk"), generation__status=Generation.Status.DONE
            )
            .order_by("-added_at", "-id")
            .values("generation_id")[:1]
        )
        counted = self.annotate(
            item_count=Count("items", distinct=True), cover_generation_id=Subquery(newest_done)
        )
        # A query with GROUP BY leaves Meta.ordering out: by name again, as the others are.
        return counted.order_by(*Collection._meta.ordering)


class Collection(models.Model):
    """A named set of its owner's generations (a board, a folder): one generation may be in
    several, and deleting a collection never deletes what is in it."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections"
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, max_length=1000)
    generations = models.ManyToManyField(
        Generation, through="CollectionItem", related_name="collections"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CollectionQuerySet.as_manager()

    class Meta:
        ordering = [Lower("name"), "id"]
        constraints = [
            models.UniqueConstraint("owner", Lower("name"), name="collection_unique_name_per_owner")
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("gallery:collection", args=[self.pk])

    def add(self, generations: GenerationQuerySet) -> int:
        """Put these generations in (those of other owners are left out); how many were not
        in it yet."""
        ids = generations.filter(owner_id=self.owner_id).values_list("pk", flat=True)
        fresh = [
            CollectionItem(collection=self, generation_id=pk)
            for pk in ids.exclude(collection_items__collection=self)
        ]
        CollectionItem.objects.bulk_create(fresh, ignore_conflicts=True)
        self.touch()
        return len(fresh)

    def remove(self, generations: GenerationQuerySet) -> int:
        """Take these generations out (they stay in the gallery); how many were in it."""
        removed, _ = self.items.filter(generation__in=generations).delete()
        self.touch()
        return removed

    def touch(self) -> None:
        Collection.objects.filter(pk=self.pk).update(updated_at=timezone.now())

    def gallery(self) -> GenerationQuerySet:
        """Its generations, as the gallery shows them (newest first)."""
        return Generation.objects.filter(owner_id=self.owner_id, collection_items__collection=self)


def covers(collections: list[Collection]) -> dict[int, Image]:
    """The cover image of each collection `with_counts`, by collection id, in one query."""
    images = Image.objects.filter(
        generation__in=[c.cover_generation_id for c in collections if c.cover_generation_id],
        index=0,
    )
    by_generation = {image.generation_id: image for image in images}
    return {
        c.pk: by_generation[c.cover_generation_id]
        for c in collections
        if c.cover_generation_id in by_generation
    }


class CollectionItem(models.Model):
    """One generation in one collection. The unit is the generation, as the gallery's tiles,
    selection, filters and paging are: its image goes with it."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="items")
    generation = models.ForeignKey(
        Generation, on_delete=models.CASCADE, related_name="collection_items"
    )
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-added_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "generation"], name="collection_item_unique"
            )
        ]

    def __str__(self) -> str:
        return f"Generation {self.generation_id} in collection {self.collection_id}"


class ShareLinkQuerySet(models.QuerySet):
    def owned_by(self, user) -> ShareLinkQuerySet:
        return self.filter(Q(image__generation__owner=user) | Q(collection__owner=user))

    def active(self, now: datetime | None = None) -> ShareLinkQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )

    def with_views_left(self) -> ShareLinkQuerySet:
        return self.filter(Q(max_views__isnull=True) | Q(view_count__lt=F("max_views")))


# Chat apps and search engines fetch a shared page to draw its preview: such a fetch is not
# someone looking at the link, so it uses up none of its views. Matched case-insensitively
# anywhere in the User-Agent header.
LINK_UNFURLERS = (
    "slackbot",
    "slack-imgproxy",
    "twitterbot",
    "facebookexternalhit",
    "facebookcatalog",
    "discordbot",
    "whatsapp",
    "telegrambot",
    "linkedinbot",
    "googlebot",
    "bingbot",
    "applebot",
    "skypeuripreview",
    "mattermost",
    "redditbot",
    "pinterestbot",
    "embedly",
    "iframely",
    "vkshare",
)


def is_link_unfurler(user_agent: str) -> bool:
    agent = user_agent.lower()
    return any(name in agent for name in LINK_UNFURLERS)


class ShareLink(models.Model):
    """A public, revocable URL to one image, or to a collection (an album link: the page shows
    the collection as it is at each view). Every option applies to both kinds."""

    image = models.ForeignKey(
        Image, on_delete=models.CASCADE, related_name="share_links", null=True, blank=True
    )
    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="share_links", null=True, blank=True
    )
    token = models.CharField(max_length=64, unique=True, default=new_share_token, editable=False)
    show_prompt = models.BooleanField(default=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # A hash from Django's password hashers, or empty for a link without a password.
    password = models.CharField(max_length=128, blank=True, default="")
    allow_download = models.BooleanField(default=True)
    max_views = models.PositiveIntegerField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True, default="")
    view_count = models.PositiveIntegerField(default=0)
    last_viewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ShareLinkQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(image__isnull=False, collection__isnull=True)
                | Q(image__isnull=True, collection__isnull=False),
                name="share_link_one_target",
            )
        ]

    def __str__(self) -> str:
        if self.collection_id:
            return f"Album link for collection {self.collection_id}"
        return f"Share link for image {self.image_id}"

    @property
    def is_album(self) -> bool:
        return self.collection_id is not None

    def album_images(self) -> ImageQuerySet:
        """The images an album link shows now: the first of each finished generation in the
        collection, newest first, as the gallery's tiles show them."""
        return Image.objects.filter(
            index=0,
            generation__status=Generation.Status.DONE,
            generation__collection_items__collection_id=self.collection_id,
        ).order_by("-generation_id")

    def get_absolute_url(self) -> str:
        return reverse("share", args=[self.token])

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_used_up(self) -> bool:
        return self.max_views is not None and self.view_count >= self.max_views

    @property
    def is_active(self) -> bool:
        return not self.is_revoked and not self.is_expired and not self.is_used_up

    @property
    def has_password(self) -> bool:
        return bool(self.password)

    def set_password(self, raw: str) -> None:
        """A new password, or none for an empty one."""
        self.password = make_password(raw) if raw else ""

    def check_password(self, raw: str) -> bool:
        return self.has_password and check_password(raw, self.password)

    @property
    def unlock_key(self) -> str:
        """What a browser that typed the password keeps in its session: it changes with the
        password, so a new one locks out everyone who knew the old one."""
        return f"{self.pk}:{salted_hmac('share-link-unlock', self.password).hexdigest()[:16]}"

    def _password_limits(self, address: str) -> list[RateLimit]:
        limits = [
            RateLimit("share-password-address", address, settings.RATELIMIT_SHARE_PASSWORD),
            RateLimit("share-password-link", str(self.pk), settings.RATELIMIT_SHARE_PASSWORD_LINK),
        ]
        return [limit for limit in limits if limit.rate]

    def password_wait(self, address: str) -> int:
        """Seconds until a visitor from this address may try a password again: 0 now, else
        until the fuller of the two counters (this address, this link) starts again."""
        waits = [
            max(1, usage["time_left"])
            for usage in (limit.usage() for limit in self._password_limits(address))
            if usage and usage["count"] >= usage["limit"]
        ]
        return max(waits, default=0)

    def try_password(self, raw: str, address: str) -> bool:
        """Whether `raw` unlocks the link. Raises LimitReached, without checking it, while
        too many wrong ones came from this address or for this link; a wrong one counts
        against both."""
        wait = self.password_wait(address)
        if not wait and self.check_password(raw):
            return True
        if not wait:
            for limit in self._password_limits(address):
                limit.usage(increment=True)
            wait = self.password_wait(address)
        if wait:
            raise LimitReached(
                f"Too many wrong passwords. You can try again in {wait_words(wait)}.",
                code="rate_limited",
                retry_after=wait,
            )
        return False

    @property
    def preview_title(self) -> str:
        """The title a chat app shows: the prompt only if the owner chose to share it. An
        album is titled by its collection's name, which its share form says it shows. Behind
        a password, neither: the preview must not give away what the password keeps."""
        if self.has_password:
            kind = "album" if self.is_album else "image"
            return f"A password-protected {kind} on Banana Gallery"
        if self.is_album:
            return Truncator(self.collection.name).chars(70)
        if self.show_prompt:
            return Truncator(self.image.generation.prompt).chars(70)
        return "An image shared from Banana Gallery"

    @property
    def preview_description(self) -> str:
        if self.is_album and self.collection.description:
            return Truncator(self.collection.description).chars(200)
        if self.is_album:
            return "An album made with Banana Gallery."
        if self.show_prompt:
            return Truncator(self.image.generation.prompt).chars(200)
        return "Made with Banana Gallery."

    @property
    def image_alt(self) -> str:
        return self.alt_for(self.image)

    @property
    def file_name(self) -> str:
        return self.file_name_for(self.image)

    def alt_for(self, image: Image) -> str:
        if self.show_prompt:
            return Truncator(image.generation.prompt).chars(200)
        return "A shared image"

    def file_name_for(self, image: Image) -> str:
        """The name a public image is served under: the prompt's first words only if the
        owner chose to show the prompt, and never an id."""
        if self.show_prompt:
            words = slugify(image.generation.prompt[:60]) or "image"
            return f"banana-{words}.{image.extension}"
        return f"banana-shared-image.{image.extension}"

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ShareLink.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
                revoked_at=self.revoked_at
            )

    def record_view(self) -> bool:
        """Counts one view, if the link has one left: False when its maximum is reached. One
        conditional UPDATE, so two visitors at once cannot both take the last view."""
        counted = (
            ShareLink.objects.filter(pk=self.pk)
            .with_views_left()
            .update(view_count=F("view_count") + 1, last_viewed_at=timezone.now())
        )
        if counted:
            self.view_count += 1
        return bool(counted)
