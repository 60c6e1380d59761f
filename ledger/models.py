"""The cost ledger: one append-only entry for every task the image service accepted.

The image service charges when it accepts a task (createTask answers with a task id), so that
is when an entry is written: in the same transaction as the generation's move to "accepted"
(`Generation.mark_submitted`), with the price of its resolution copied in from the price table.
Each entry later gets its outcome, once:

- done: the image is stored;
- failed: the image service said the task failed, or its finished image could not be saved;
- abandoned: given up without an end from the image service (it forgot the task, the task
  passed AIGPTIMAGE_TASK_DEADLINE, or checking on it kept failing): charged all the same;
- deleted: the user deleted the generation while its task was still pending.

A generation deleted after its task ended keeps that outcome (done, failed, abandoned); every
entry of a deleted generation keeps its id in `generation_pk`. Entries are never deleted and
their prices never change, so every total of spending is a sum over these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

from django.apps import apps
from django.conf import settings
from django.db import models
from django.db.models import Case, Count, Max, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

if TYPE_CHECKING:
    from gallery.models import Generation

MONEY_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class Price:
    credits: int
    money: Decimal | None  # None unless PRICE_PER_CREDIT is set
    currency: str


def price(resolution: str) -> Price:
    """What one task at this resolution costs now, from the price table (PRICE_CREDITS, and
    PRICE_PER_CREDIT in PRICE_CURRENCY when set)."""
    credits = settings.PRICE_CREDITS[resolution]
    per_credit = settings.PRICE_PER_CREDIT
    if per_credit is None:
        return Price(credits, None, "")
    return Price(credits, (per_credit * credits).quantize(MONEY_PLACES), settings.PRICE_CURRENCY)


class AppendOnlyError(RuntimeError):
    """A ledger entry was about to be changed or deleted."""


class Totals(NamedTuple):
    credits: int = 0
    count: int = 0
    # The sum over entries priced in money; None when none of them is.
    money: Decimal | None = None


class UserTotals(NamedTuple):
    user_id: int
    username: str
    credits: int
    count: int
    money: Decimal | None


class GenerationTotals(NamedTuple):
    generation_pk: int
    generation_id: int | None  # None once the generation is deleted
    credits: int
    count: int
    money: Decimal | None


class ReasonTotals(NamedTuple):
    outcome: str
    code: str
    count: int
    credits: int
    example: str  # one of the reasons given, in full


def _sums() -> dict:
    """The sums of Totals, under names that do not clash with the model's own fields."""
    return {"sum_credits": Coalesce(Sum("credits"), 0), "n": Count("id"), "sum_money": Sum("money")}


def _totals(row: dict) -> Totals:
    return Totals(row["sum_credits"], row["n"], row["sum_money"])


def month_range(day: date) -> tuple[date, date]:
    """The first day of `day`'s month and of the month after (when a monthly sum renews)."""
    first = day.replace(day=1)
    return first, (first + timedelta(days=32)).replace(day=1)


def _moment(value: date | datetime) -> datetime:
    """A datetime as it is; a date as the start of that day in the current time zone."""
    if isinstance(value, datetime):
        return value
    return timezone.make_aware(datetime.combine(value, time.min))


class LedgerEntryQuerySet(models.QuerySet):
    # Which entries

    def for_user(self, user) -> LedgerEntryQuerySet:
        return self.filter(user=user)

    def between(self, start: date | datetime, end: date | datetime) -> LedgerEntryQuerySet:
        """Accepted from `start` up to, not including, `end` (a date: that day's start in the
        current time zone), so December is `between(date(2026, 12, 1), date(2027, 1, 1))`."""
        return self.filter(accepted_at__gte=_moment(start), accepted_at__lt=_moment(end))

    def in_month(self, day: date | datetime) -> LedgerEntryQuerySet:
        """Accepted in the calendar month (of the current time zone) that `day` is in."""
        if isinstance(day, datetime):
            day = timezone.localdate(day)
        return self.between(*month_range(day))

    def pending(self) -> LedgerEntryQuerySet:
        return self.filter(outcome=LedgerEntry.Outcome.PENDING)

    def failures(self) -> LedgerEntryQuerySet:
        """Charged with no image to show for it: failed or abandoned (the reason is in
        `outcome_code` and `outcome_reason`)."""
        return self.filter(outcome__in=(LedgerEntry.Outcome.FAILED, LedgerEntry.Outcome.ABANDONED))

    # Sums

    def totals(self) -> Totals:
        return _totals(self.aggregate(**_sums()))

    def total_credits(self) -> int:
        return self.totals().credits

    def by_day(self, start: date | None = None, end: date | None = None) -> dict[date, Totals]:
        """Totals per day of acceptance in the current time zone, oldest first. Given `start`
        and `end`, only the days from `start` up to, not including, `end`, each of them, with
        zero totals on days without entries: a chart's series."""
        entries = self if start is None or end is None else self.between(start, end)
        day = TruncDate("accepted_at", tzinfo=timezone.get_current_timezone())
        rows = entries.annotate(day=day).values("day").annotate(**_sums()).order_by("day")
        series = {row["day"]: _totals(row) for row in rows}
        if start is None or end is None:
            return series
        days = (start + timedelta(days=i) for i in range((end - start).days))
        return {day: series.get(day, Totals()) for day in days}

    def by_user(self) -> list[UserTotals]:
        """Totals per user, the biggest spender first."""
        rows = (
            self.values("user", "user__username")
            .annotate(**_sums())
            .order_by("-sum_credits", "user__username")
        )
        return [UserTotals(r["user"], r["user__username"], *_totals(r)) for r in rows]

    def by_generation(self) -> list[GenerationTotals]:
        """Totals per generation (a retried one has an entry per try), the dearest first."""
        rows = (
            self.values("generation_pk", "generation")
            .annotate(**_sums())
            .order_by("-sum_credits", "-generation_pk")
        )
        return [GenerationTotals(r["generation_pk"], r["generation"], *_totals(r)) for r in rows]

    def by_outcome(self) -> dict[str, Totals]:
        """Totals for every outcome, pending included, zero where there are none."""
        rows = self.values("outcome").annotate(**_sums()).order_by()
        found = {row["outcome"]: _totals(row) for row in rows}
        return {outcome: found.get(outcome, Totals()) for outcome in LedgerEntry.Outcome.values}

    def failure_reasons(self) -> list[ReasonTotals]:
        """Failures grouped by outcome and code, the most frequent first."""
        rows = (
            self.failures()
            .values("outcome", "outcome_code")
            .annotate(**_sums(), example=Max("outcome_reason"))
            .order_by("-n", "outcome", "outcome_code")
        )
        return [
            ReasonTotals(r["outcome"], r["outcome_code"], r["n"], r["sum_credits"], r["example"])
            for r in rows
        ]

    # Writing: an entry is added once, and settled once.

    def record_accepted(self, generation: Generation, accepted_at: datetime) -> None:
        """The entry of the task the image service just accepted for `generation` (its
        `task_id` set), at today's price: one INSERT, which does nothing when that task has
        its entry already (the same task recorded twice)."""
        cost = price(generation.resolution)
        entry = LedgerEntry(
            user_id=generation.owner_id,
            generation_id=generation.pk,
            generation_pk=generation.pk,
            task_id=generation.task_id,
            resolution=generation.resolution,
            credits=cost.credits,
            money=cost.money,
            currency=cost.currency,
            accepted_at=accepted_at,
        )
        self.bulk_create([entry], ignore_conflicts=True)

    def settle(self, outcome: str, code: str = "", reason: str = "") -> int:
        """Give the pending entries among these their outcome. Settled ones keep theirs."""
        return self.pending().update(
            outcome=outcome,
            outcome_code=code[:20],
            outcome_reason=reason,
            outcome_at=timezone.now(),
        )

    def update(self, **fields) -> int:
        if changed := set(fields) - LedgerEntry.SETTLE_FIELDS:
            raise AppendOnlyError(f"Ledger entries keep their {', '.join(sorted(changed))}")
        return super().update(**fields)

    def delete(self):
        raise AppendOnlyError("Ledger entries are never deleted")


class LedgerEntry(models.Model):
    """One task the image service accepted (and so charged for), at the price of then."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        ABANDONED = "abandoned", "Abandoned"
        DELETED = "deleted", "Deleted while pending"

    SETTLE_FIELDS = frozenset({"outcome", "outcome_code", "outcome_reason", "outcome_at"})

    # PROTECT: a user who was charged for something cannot be deleted (deactivate them), so
    # every credit spent stays with whoever spent it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    generation = models.ForeignKey(
        "gallery.Generation",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="ledger_entries",
    )
    # The generation's id, kept when the generation is deleted.
    generation_pk = models.PositiveBigIntegerField("generation id")
    task_id = models.CharField(max_length=100, unique=True)
    resolution = models.CharField(max_length=4)
    credits = models.PositiveIntegerField()
    money = models.DecimalField(max_digits=18, decimal_places=6, null=True, blank=True)
    currency = models.CharField(max_length=8, blank=True)
    accepted_at = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    outcome_code = models.CharField(max_length=20, blank=True)
    outcome_reason = models.TextField(blank=True)
    outcome_at = models.DateTimeField(null=True, blank=True)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-accepted_at", "-id"]
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["accepted_at"], name="ledger_accepted"),
            models.Index(fields=["user", "accepted_at"], name="ledger_user_accepted"),
            models.Index(fields=["outcome", "accepted_at"], name="ledger_outcome_accepted"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(outcome__in=["pending", "done", "failed", "abandoned", "deleted"]),
                name="ledger_outcome_known",
            ),
            models.CheckConstraint(
                condition=Q(outcome="pending", outcome_at__isnull=True)
                | (~Q(outcome="pending") & Q(outcome_at__isnull=False)),
                name="ledger_settled_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id}: {self.credits} credits, {self.get_outcome_display().lower()}"

    @property
    def is_pending(self) -> bool:
        return self.outcome == self.Outcome.PENDING

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AppendOnlyError("A ledger entry is never changed; settle() gives its outcome")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Ledger entries are never deleted")


# Allowances: what each user may spend and ask for


class Limits(models.Model):
    """One user's or one group's own limits. An empty field is not set here and comes from
    elsewhere (see `Allowance.for_user`); 0 is no limit, as in the settings."""

    monthly_credits = models.PositiveIntegerField(
        "monthly budget",
        null=True,
        blank=True,
        help_text="Credits a calendar month. 0: no limit. Empty: not set here.",
    )
    max_pending = models.PositiveIntegerField(
        "unfinished at once",
        null=True,
        blank=True,
        help_text="Generations queued or in progress at once. 0: no limit. Empty: not set here.",
    )
    daily_generations = models.PositiveIntegerField(
        "generations a day",
        null=True,
        blank=True,
        help_text="Images a calendar day. 0: no limit. Empty: not set here.",
    )

    # Each limit and the setting that is its default for everyone.
    DEFAULTS = {
        "monthly_credits": "BUDGET_MONTHLY_CREDITS",
        "max_pending": "MAX_PENDING_PER_USER",
        "daily_generations": "DAILY_GENERATIONS_PER_USER",
    }

    class Meta:
        abstract = True


class UserLimits(Limits):
    """A user's own limits: these win over their groups' and the defaults."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits"
    )

    class Meta:
        verbose_name = "user's limits"
        verbose_name_plural = "users' limits"

    def __str__(self) -> str:
        return f"Limits of {self.user}"


class GroupLimits(Limits):
    """The limits of a group's members: a member gets the most generous of their groups'."""

    group = models.OneToOneField("auth.Group", on_delete=models.CASCADE, related_name="limits")

    class Meta:
        verbose_name = "group's limits"
        verbose_name_plural = "groups' limits"

    def __str__(self) -> str:
        return f"Limits of {self.group}"


def limit_expression(field: str, user: str = "pk") -> Coalesce:
    """The limit `field` of the user whose id is at `OuterRef(user)`, in SQL: their own, else
    the most generous of their groups' (0, no limit, is the most generous of all), else the
    setting's default. 0 means no limit."""
    own = UserLimits.objects.filter(user=OuterRef(user)).values(field)[:1]
    generous_first = Case(When(**{field: 0}, then=Value(0)), default=Value(1))
    groups = (
        GroupLimits.objects.filter(group__user=OuterRef(user), **{f"{field}__isnull": False})
        .order_by(generous_first, f"-{field}")
        .values(field)[:1]
    )
    default = getattr(settings, Limits.DEFAULTS[field])
    return Coalesce(
        Subquery(own), Subquery(groups), Value(default), output_field=models.IntegerField()
    )


def price_expression() -> Case:
    """A generation's price in credits from today's price table, in SQL."""
    return Case(
        *(When(resolution=r, then=Value(c)) for r, c in settings.PRICE_CREDITS.items()),
        default=Value(0),
        output_field=models.IntegerField(),
    )


def _sum(rows: models.QuerySet, group_by: str, total) -> Coalesce:
    """`total` summed over `rows` (all of one user, `group_by` naming them) as a subquery."""
    summed = rows.order_by().values(group_by).annotate(total=total).values("total")
    return Coalesce(Subquery(summed), Value(0), output_field=models.IntegerField())


def spent_expression(start: date, end: date, user: str = "pk") -> Coalesce:
    """Credits of the ledger's entries of the user at `OuterRef(user)` accepted from `start`
    up to `end`, in SQL."""
    rows = LedgerEntry.objects.filter(user=OuterRef(user)).between(start, end)
    return _sum(rows, "user", Sum("credits"))


def accepted_expression(start: date, end: date, user: str = "pk") -> Coalesce:
    """How many tasks of the user at `OuterRef(user)` were accepted from `start` up to `end`."""
    rows = LedgerEntry.objects.filter(user=OuterRef(user)).between(start, end)
    return _sum(rows, "user", Count("id"))


def _generations():
    # gallery.models imports this module, so its model is looked up when needed.
    return apps.get_model("gallery", "Generation")


def unsent_expression(total, statuses: tuple[str, ...] | None = None, user: str = "pk"):
    """`total` (Count or Sum) over the generations of the user at `OuterRef(user)` that the
    image service has not accepted yet: queued or being sent, or those of `statuses`."""
    Generation = _generations()
    statuses = statuses or (Generation.Status.QUEUED, Generation.Status.SUBMITTING)
    return _sum(
        Generation.objects.filter(owner=OuterRef(user), status__in=statuses), "owner", total
    )


def _no_limit_is_none(value: int) -> int | None:
    return value or None


@dataclass(frozen=True)
class Allowance:
    """What a user may spend and ask for; None is no limit. A month is the calendar month in
    TIME_ZONE, and the budget renews on the first of the next."""

    monthly_credits: int | None
    max_pending: int | None
    daily_generations: int | None
    renews_on: date

    @classmethod
    def for_user(cls, user) -> Allowance:
        """Each limit is the user's own (set by an admin), else the most generous of their
        groups', else the default for everyone (BUDGET_MONTHLY_CREDITS, MAX_PENDING_PER_USER,
        DAILY_GENERATIONS_PER_USER). One query."""
        limits = _annotated(user, **_limit_annotations())
        return cls._from(limits)

    @classmethod
    def _from(cls, row: dict) -> Allowance:
        return cls(
            *(_no_limit_is_none(row[field]) for field in Limits.DEFAULTS),
            renews_on=month_range(timezone.localdate())[1],
        )


def _limit_annotations() -> dict:
    return {field: limit_expression(field) for field in Limits.DEFAULTS}


def _annotated(user, **annotations) -> dict:
    User = apps.get_model(settings.AUTH_USER_MODEL)
    return User.objects.filter(pk=user.pk).annotate(**annotations).values(*annotations).get()


@dataclass(frozen=True)
class Standing:
    """Where a user stands against their allowance now, read in one query (so one snapshot:
    a generation being accepted meanwhile is counted once, as reserved or as spent)."""

    allowance: Allowance
    spent: int  # credits accepted this month (the ledger)
    reserved: int  # the price of their generations not accepted yet
    unsent: int  # how many those are
    pending: int  # generations not finished
    today: int  # tasks accepted today

    @classmethod
    def of(cls, user) -> Standing:
        Generation = _generations()
        today = timezone.localdate()
        row = _annotated(
            user,
            **_limit_annotations(),
            spent=spent_expression(*month_range(today)),
            reserved=unsent_expression(Sum(price_expression())),
            unsent=unsent_expression(Count("id")),
            pending=unsent_expression(Count("id"), statuses=Generation.PENDING),
            today=accepted_expression(today, today + timedelta(days=1)),
        )
        fields = ("spent", "reserved", "unsent", "pending", "today")
        return cls(Allowance._from(row), *(row[field] for field in fields))

    @property
    def credits_left(self) -> int | None:
        monthly = self.allowance.monthly_credits
        return None if monthly is None else max(0, monthly - self.spent - self.reserved)

    @property
    def images_left_today(self) -> int | None:
        daily = self.allowance.daily_generations
        return None if daily is None else max(0, daily - self.today - self.unsent)

    @property
    def room(self) -> int | None:
        """How many more generations may be unfinished at once."""
        cap = self.allowance.max_pending
        return None if cap is None else max(0, cap - self.pending)


def spent_this_month(user) -> int:
    """Credits of the tasks accepted for `user` this calendar month, whatever their outcome."""
    return LedgerEntry.objects.for_user(user).in_month(timezone.localdate()).total_credits()


def reserved(user) -> int:
    """Credits held for `user`'s generations that the image service has not accepted yet
    (queued or being sent), at today's prices: they are charged once accepted."""
    return _annotated(user, reserved=unsent_expression(Sum(price_expression())))["reserved"]


def credits_left(user) -> int | None:
    """What `user` may still spend this month; None without a monthly budget."""
    return Standing.of(user).credits_left
