"""The usage page of every user and the staff dashboard: sums of the cost ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.http import urlencode
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET

from accounts.models import Approval, Invite, Registration
from accounts.views import staff_only
from gallery.models import Generation, ProviderAccount
from ledger.export import csv_response
from ledger.forms import FIRST_YEAR, LedgerRangeForm, MonthForm
from ledger.models import (
    Allowance,
    LedgerEntry,
    Totals,
    UserTotals,
    credits_left,
    month_range,
    reserved,
    spent_this_month,
)
from ledger.templatetags.usage import credits

Outcome = LedgerEntry.Outcome
CHART_DAYS = 30
# The chart's own units (CSS sizes the drawing): a bar every 10 across, 100 tall at most.
CHART_HEIGHT, BAR_STEP, BAR_WIDTH = 100, 10, 8
DEAREST_SHOWN, FAILED_SHOWN, SIGNUPS_SHOWN = 5, 10, 5
USER_SORTS = {
    "credits": None,  # the ledger's own order: the biggest spender first
    "user": lambda row: row.username.lower(),
    "tasks": lambda row: (-row.count, row.username.lower()),
}


def _day(day: date) -> str:
    return date_format(day, "j F")


# The chart


@dataclass(frozen=True)
class Bar:
    day: date
    totals: Totals
    x: int
    y: float
    height: float


@dataclass(frozen=True)
class DayChart:
    """Credits per day as bars, drawn by the server (templates/ledger/chart.html)."""

    bars: list[Bar]
    most: int
    total: int
    summary: str
    height: int = CHART_HEIGHT
    bar_width: int = BAR_WIDTH

    @property
    def width(self) -> int:
        return len(self.bars) * BAR_STEP


def day_chart(series: dict[date, Totals]) -> DayChart:
    """One bar per day of `series` (as `by_day(start, end)` gives it), as tall as its credits
    next to the day with the most, which is the chart's full height."""
    most = max((totals.credits for totals in series.values()), default=0)
    bars = []
    for i, (day, totals) in enumerate(series.items()):
        height = round(totals.credits * CHART_HEIGHT / most, 2) if most else 0
        x = i * BAR_STEP + (BAR_STEP - BAR_WIDTH) // 2
        bars.append(Bar(day, totals, x, CHART_HEIGHT - height, height))
    total = sum(bar.totals.credits for bar in bars)
    span = f"from {_day(bars[0].day)} to {_day(bars[-1].day)}" if bars else ""
    if total:
        peak = max(bars, key=lambda bar: bar.totals.credits)
        summary = (
            f"Credits spent per day {span}: {credits(total)} in all, "
            f"the most on {_day(peak.day)} ({credits(most)})."
        )
    else:
        summary = f"No credits were spent {span}."
    return DayChart(bars, most, total, summary)


# The usage page


@dataclass(frozen=True)
class Budget:
    spent: int
    reserved: int
    monthly: int | None
    left: int | None
    renews_on: date

    @property
    def used(self) -> int:
        """Spent and held: what the meter shows."""
        return min(self.spent + self.reserved, self.monthly or 0)

    @property
    def words(self) -> str:
        if self.monthly is None:
            used = ngettext(
                "%(spent)s credit used this month.",
                "%(spent)s credits used this month.",
                self.spent,
            ) % {"spent": f"{self.spent:,}"}
            return f"{used} There is no monthly limit on your account."
        used = ngettext(
            "%(spent)s of %(monthly)s credit used this month",
            "%(spent)s of %(monthly)s credits used this month",
            self.monthly,
        ) % {"spent": f"{self.spent:,}", "monthly": f"{self.monthly:,}"}
        held = f", {credits(self.reserved)} held for queued images" if self.reserved else ""
        left = f"{self.left:,} left" if self.left else "none left"
        return f"{used}{held}, {left}, renews on {_day(self.renews_on)}."

    def money(self, amount: int | None) -> Decimal | None:
        """What `amount` credits are worth at today's PRICE_PER_CREDIT, when it is set."""
        if amount is None or settings.PRICE_PER_CREDIT is None:
            return None
        return settings.PRICE_PER_CREDIT * amount

    @property
    def monthly_money(self) -> Decimal | None:
        return self.money(self.monthly)

    @property
    def left_money(self) -> Decimal | None:
        return self.money(self.left)


def budget_of(user) -> Budget:
    allowance = Allowance.for_user(user)
    return Budget(
        spent=spent_this_month(user),
        reserved=reserved(user),
        monthly=allowance.monthly_credits,
        left=credits_left(user),
        renews_on=allowance.renews_on,
    )


@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    """What the signed-in user spent: this month against the budget, the last 30 days per
    day, the dearest and the failed generations of the month. Only their own entries."""
    today = timezone.localdate()
    mine = LedgerEntry.objects.for_user(request.user)
    month = mine.in_month(today)
    outcomes = month.by_outcome()
    dearest = month.by_generation()[:DEAREST_SHOWN]
    generations = Generation.objects.owned_by(request.user).in_bulk(
        [row.generation_id for row in dearest if row.generation_id]
    )
    start = today - timedelta(days=CHART_DAYS - 1)
    context = {
        "budget": budget_of(request.user),
        "month": today,
        "totals": month.totals(),
        "made": outcomes[Outcome.DONE].count,
        "failed": outcomes[Outcome.FAILED].count + outcomes[Outcome.ABANDONED].count,
        "pending": outcomes[Outcome.PENDING].count,
        "chart": day_chart(mine.by_day(start, today + timedelta(days=1))),
        "dearest": [(row, generations.get(row.generation_id)) for row in dearest],
        "failures": month.failures().select_related("generation")[:FAILED_SHOWN],
        "priced": settings.PRICE_PER_CREDIT is not None,
    }
    return render(request, "ledger/usage.html", context)


# The staff dashboard


@dataclass(frozen=True)
class UserRow:
    totals: UserTotals
    share: float  # of the month's credits


def _sorted_users(rows: list[UserTotals], sort: str, total: int) -> list[UserRow]:
    if key := USER_SORTS.get(sort):
        rows = sorted(rows, key=key)
    return [UserRow(row, row.credits / total if total else 0.0) for row in rows]


def _signups() -> dict:
    """Who waits for approval and which invites can still be used, the first few of each,
    with their counts in words; the sign-ups page (accounts) is where staff act on them."""
    waiting = Approval.objects.pending().count()
    invites = Invite.objects.usable().count()
    return {
        "registration": Registration.get(),
        "waiting": Approval.objects.pending().select_related("user")[:SIGNUPS_SHOWN],
        "waiting_words": ngettext(
            "%(n)d account waiting for approval", "%(n)d accounts waiting for approval", waiting
        )
        % {"n": waiting},
        "invites": Invite.objects.usable()[:SIGNUPS_SHOWN],
        "invites_words": ngettext("%(n)d open invite", "%(n)d open invites", invites)
        % {"n": invites},
    }


def _dashboard(month: date, sort: str, range_form: LedgerRangeForm | None = None) -> dict:
    first, after = month_range(month)
    entries = LedgerEntry.objects.in_month(first)
    totals = entries.totals()
    outcomes = entries.by_outcome()
    failures = outcomes[Outcome.FAILED].count + outcomes[Outcome.ABANDONED].count
    ended = failures + outcomes[Outcome.DONE].count
    before = (first - timedelta(days=1)).replace(day=1)
    today = timezone.localdate()
    if range_form is None:
        last = after - timedelta(days=1)
        range_form = LedgerRangeForm(initial={"start": first, "end": last})
    return {
        "month": first,
        "month_value": f"{first:%Y-%m}",
        "earlier": f"{before:%Y-%m}" if before.year >= FIRST_YEAR else "",
        "later": f"{after:%Y-%m}" if after <= today else "",
        "sort": sort,
        "sort_links": {
            name: "?" + urlencode({"month": f"{first:%Y-%m}", "sort": name}) for name in USER_SORTS
        },
        "totals": totals,
        "users": _sorted_users(entries.by_user(), sort, totals.credits),
        "chart": day_chart(entries.by_day(first, after)),
        "outcomes": [(Outcome(name).label, row) for name, row in outcomes.items()],
        "failures": failures,
        "ended": ended,
        "failure_rate": failures / ended if ended else None,
        "reasons": entries.failure_reasons(),
        "account": ProviderAccount.get(),
        "queued": Generation.objects.queued().count(),
        "in_flight": Generation.objects.in_flight().count(),
        "saving": Generation.objects.downloading().count(),
        "active_limit": settings.AIGPTIMAGE_MAX_ACTIVE_TASKS,
        "signups": _signups(),
        "range_form": range_form,
        "priced": settings.PRICE_PER_CREDIT is not None,
    }


@staff_only
@require_GET
def staff_usage(request: HttpRequest) -> HttpResponse:
    """Spending of the whole site for a month (?month=2026-11, this month by default), and
    the state of the image service and the queue now."""
    form = MonthForm(request.GET)
    valid = form.is_valid()
    month = form.cleaned_data.get("month") or timezone.localdate()
    sort = request.GET.get("sort", "")
    context = _dashboard(month, sort if sort in USER_SORTS else "credits")
    # A month that cannot be read shows this month, and says so.
    context["errors"] = form.errors.get("month", [])
    return render(request, "ledger/staff_usage.html", context, status=200 if valid else 400)


@staff_only
@require_GET
def staff_ledger_csv(request: HttpRequest) -> HttpResponse:
    """The ledger's entries from ?start= to ?end= (both days included) as CSV."""
    form = LedgerRangeForm(request.GET)
    if not form.is_valid():
        context = _dashboard(timezone.localdate(), "credits", range_form=form)
        return render(request, "ledger/staff_usage.html", context, status=400)
    start, end = form.bounds()
    name = f"ledger-{start:%Y-%m-%d}-to-{form.cleaned_data['end']:%Y-%m-%d}.csv"
    return csv_response(LedgerEntry.objects.between(start, end), name)
