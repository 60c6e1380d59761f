"""The usage page of every user and the staff dashboard, from ledger entries the factories
write (the pipeline that books them is tests/test_ledger.py's)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Approval, Invite, Registration
from gallery.models import Generation, ProviderAccount
from ledger.models import LedgerEntry, month_range
from tests.factories import make_entry, make_generation

Outcome = LedgerEntry.Outcome
USAGE = reverse("ledger:usage")
DASHBOARD = reverse("ledger:staff_usage")
CSV = reverse("ledger:staff_ledger_csv")
BAR = re.compile(
    r'<rect class="chart-bar" x="(\d+)" y="([\d.]+)" width="8" height="([\d.]+)" '
    r'data-day="([\d-]+)" data-credits="(\d+)"><title>([^<]*)</title></rect>'
)


@pytest.fixture
def staff(charlie):
    charlie.is_staff = True
    charlie.save()
    return charlie


def noon(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time(12)))


def at(day: int, hour: int = 12, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def bars(html: str) -> list[tuple[int, float, float, str, int, str]]:
    return [
        (int(x), float(y), float(h), day, int(n), title)
        for x, y, h, day, n, title in BAR.findall(html)
    ]


def text(response) -> str:
    """The page's words, tags stripped and spaces squeezed."""
    return " ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split())


# The usage page


def test_it_shows_this_months_spend_against_the_budget(client, alice, bob, settings):
    settings.BUDGET_MONTHLY_CREDITS = 200
    now = timezone.now()
    first, after = month_range(timezone.localdate())
    make_entry(alice, now, credits=4)
    make_entry(alice, now, credits=2, outcome=Outcome.FAILED, outcome_code="fail")
    make_entry(alice, now, credits=1, outcome=Outcome.PENDING)
    make_entry(alice, noon(first - timedelta(days=1)), credits=8)  # last month
    make_entry(bob, now, credits=16)
    client.force_login(alice)

    response = client.get(USAGE)
    assert response.status_code == 200
    renews = f"{after.day} {after:%B}"
    assert f"7 of 200 credits used this month, 193 left, renews on {renews}." in text(response)
    html = response.content.decode()
    assert 'max="200" value="7"' in html  # the meter
    assert response.context["made"] == 1
    assert response.context["failed"] == 1
    assert response.context["pending"] == 1
    assert response.context["totals"].count == 3
    assert "16" not in " ".join(re.findall(r'data-credits="(\d+)"', html))  # nothing of bob's


def test_it_says_so_when_the_budget_is_unlimited_and_shows_money(client, alice, settings):
    settings.BUDGET_MONTHLY_CREDITS = 0
    settings.PRICE_PER_CREDIT = Decimal("0.04")
    settings.PRICE_CURRENCY = "USD"
    make_entry(alice, timezone.now(), credits=4, money=Decimal("0.16"), currency="USD")
    client.force_login(alice)
    response = client.get(USAGE)
    words = text(response)
    assert "4 credits used this month. There is no monthly limit on your account." in words
    assert "That is 0.16 USD." in words
    assert "<meter" not in response.content.decode()

    settings.BUDGET_MONTHLY_CREDITS = 200
    words = text(client.get(USAGE))
    assert "That is 0.16 USD of 8.00 USD, 7.84 USD left." in words


def test_it_says_none_left_when_the_budget_is_spent(client, alice, settings):
    settings.BUDGET_MONTHLY_CREDITS = 1
    make_entry(alice, timezone.now(), credits=2)
    client.force_login(alice)
    response = client.get(USAGE)
    assert "2 of 1 credit used this month, none left, renews on" in text(response)
    assert 'max="1" value="1"' in response.content.decode()


def test_it_draws_one_bar_per_day_for_30_days(client, alice, bob):
    today = timezone.localdate()
    make_entry(alice, noon(today), credits=6)
    make_entry(alice, noon(today - timedelta(days=2)), credits=2)
    make_entry(alice, noon(today - timedelta(days=2)), credits=1, outcome=Outcome.FAILED)
    make_entry(alice, noon(today - timedelta(days=29)), credits=1)
    make_entry(alice, noon(today - timedelta(days=30)), credits=5)  # a day too early
    make_entry(bob, noon(today - timedelta(days=1)), credits=9)
    client.force_login(alice)
    html = client.get(USAGE).content.decode()

    drawn = bars(html)
    days = [today - timedelta(days=29 - i) for i in range(30)]
    assert [day for _, _, _, day, _, _ in drawn] == [day.isoformat() for day in days]
    assert [x for x, *_ in drawn] == [1 + 10 * i for i in range(30)]
    heights = {date.fromisoformat(day): (h, y, n) for _, y, h, day, n, _ in drawn}
    assert heights[today] == (100.0, 0.0, 6)  # the most: the chart's full height
    assert heights[days[27]] == (50.0, 50.0, 3)
    assert heights[days[0]] == (16.67, 83.33, 1)
    assert heights[days[28]] == (0.0, 100.0, 0)  # bob's day is not alice's
    assert sum(h > 0 for h, _, _ in heights.values()) == 3
    assert drawn[-1][5] == f"{today.day} {today:%B}: 6 credits"
    assert drawn[0][5] == f"{days[0].day} {days[0]:%B}: 1 credit"

    svg = re.search(r"<svg[^>]*data-chart[^>]*>\s*<title[^>]*>([^<]*)</title>", html)
    assert 'role="img"' in svg[0] and 'aria-labelledby="days-title"' in svg[0]
    assert svg[1] == (
        f"Credits spent per day from {days[0].day} {days[0]:%B} to {today.day} {today:%B}: "
        f"10 credits in all, the most on {today.day} {today:%B} (6 credits)."
    )
    # The same numbers for screen readers, one row a day.
    table = re.search(r'<div class="visually-hidden">\s*<table>(.*?)</table>', html, re.S)[1]
    assert table.count('<th scope="row">') == 30
    assert f'<th scope="row">{today.day} {today:%B %Y}</th><td>6</td><td>1</td>' in table


def test_it_draws_an_empty_chart_without_spend(client, alice):
    client.force_login(alice)
    response = client.get(USAGE)
    drawn = bars(response.content.decode())
    assert len(drawn) == 30 and all(h == 0 for _, _, h, *_ in drawn)
    assert "No credits were spent from" in text(response)
    assert "Nothing spent yet this month." in text(response)


def test_it_lists_the_dearest_and_the_failed_generations_of_the_month(client, alice, bob):
    now = timezone.now()
    retried = make_generation(alice, prompt="a castle made of glass", status="done")
    make_entry(alice, now, credits=4, outcome=Outcome.FAILED, generation=retried)
    make_entry(alice, now, credits=4, generation=retried)
    failed = make_generation(alice, prompt="a storm at sea", status="failed")
    make_entry(
        alice,
        now,
        credits=2,
        outcome=Outcome.ABANDONED,
        outcome_code="timeout",
        outcome_reason="The image service took too long.",
        generation=failed,
    )
    gone = make_generation(alice, prompt="a deleted dream", status="done")
    make_entry(alice, now, credits=3, generation=gone)
    Generation.objects.filter(pk=gone.pk).delete_with_files()
    secret = make_generation(bob, prompt="bob's secret prompt", status="failed")
    make_entry(bob, now, credits=9, outcome=Outcome.FAILED, generation=secret)
    client.force_login(alice)

    response = client.get(USAGE)
    dearest = [(row.credits, row.count, g and g.prompt) for row, g in response.context["dearest"]]
    assert dearest == [(8, 2, "a castle made of glass"), (3, 1, None), (2, 1, "a storm at sea")]
    html = response.content.decode()
    assert f'href="{retried.get_absolute_url()}"' in html
    assert f'href="{failed.get_absolute_url()}"' in html
    assert "Deleted image" in html
    failures = [(e.credits, e.outcome) for e in response.context["failures"]]
    assert failures == [(2, Outcome.ABANDONED), (4, Outcome.FAILED)]
    assert "Given up" in html and "The image service took too long." in html
    assert "secret" not in html and "9" not in re.findall(r"<td[^>]*>(\d+)</td>", html)


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_it_costs_the_same_queries_with_more_entries_and_users(client, alice, staff):
    now = timezone.now()
    client.force_login(staff)
    make_entry(alice, now, outcome=Outcome.FAILED)
    make_entry(staff, now, outcome=Outcome.FAILED)
    queries(client, USAGE), queries(client, DASHBOARD)  # the first make their settings rows
    before = queries(client, USAGE), queries(client, DASHBOARD)
    for i in range(12):
        user = User.objects.create_user(f"user{i}")
        make_entry(user, now, credits=i)
        make_entry(staff, now - timedelta(days=i), outcome=Outcome.FAILED, outcome_code=str(i))
    assert (queries(client, USAGE), queries(client, DASHBOARD)) == before


# The staff dashboard


def test_it_totals_the_month_per_user_for_staff(client, alice, bob, staff):
    make_entry(alice, at(3), credits=2)
    make_entry(alice, at(4), credits=1, outcome=Outcome.PENDING)
    make_entry(bob, at(5), credits=4)
    make_entry(bob, at(30, 23), credits=4)
    make_entry(alice, at(1, 0, month=12), credits=16)  # December
    make_entry(bob, at(31, 23, month=10), credits=16)  # October
    client.force_login(staff)

    response = client.get(DASHBOARD, {"month": "2026-11"})
    assert response.status_code == 200
    rows = [
        (r.totals.username, r.totals.credits, r.totals.count) for r in response.context["users"]
    ]
    assert rows == [("bob", 8, 2), ("alice", 3, 2)]
    assert [round(r.share, 4) for r in response.context["users"]] == [0.7273, 0.2727]
    assert response.context["totals"].credits == 11
    chart = response.context["chart"]
    assert len(chart.bars) == 30  # every day of November
    assert [(b.day.day, b.totals.credits) for b in chart.bars if b.totals.credits] == [
        (3, 2),
        (4, 1),
        (5, 4),
        (30, 4),
    ]
    assert len(bars(response.content.decode())) == 30
    words = text(response)
    assert "November 2026" in words and "72.7 %" in words

    by_name = client.get(DASHBOARD, {"month": "2026-11", "sort": "user"})
    assert [r.totals.username for r in by_name.context["users"]] == ["alice", "bob"]
    by_tasks = client.get(DASHBOARD, {"month": "2026-11", "sort": "tasks"})
    assert [r.totals.username for r in by_tasks.context["users"]] == ["alice", "bob"]
    unknown = client.get(DASHBOARD, {"month": "2026-11", "sort": "drop table"})
    assert unknown.status_code == 200 and unknown.context["sort"] == "credits"

    december = client.get(DASHBOARD, {"month": "2026-12"})
    assert [r.totals.username for r in december.context["users"]] == ["alice"]
    assert len(december.context["chart"].bars) == 31


def test_it_shows_the_failure_rate_and_its_reasons(client, alice, bob, staff):
    make_entry(alice, at(2), credits=1)
    make_entry(bob, at(2), credits=1)
    make_entry(alice, at(3), credits=2, outcome=Outcome.PENDING)
    make_entry(alice, at(3), credits=1, outcome=Outcome.DELETED)
    for who in (alice, bob):
        make_entry(
            who,
            at(4),
            credits=2,
            outcome=Outcome.FAILED,
            outcome_code="400",
            outcome_reason="The image service turned this request down.",
        )
    make_entry(bob, at(5), credits=4, outcome=Outcome.ABANDONED, outcome_code="404")
    client.force_login(staff)

    response = client.get(DASHBOARD, {"month": "2026-11"})
    assert response.context["failures"] == 3
    assert response.context["ended"] == 5  # done and failed; pending and deleted never ended
    assert response.context["failure_rate"] == pytest.approx(0.6)
    reasons = [(r.outcome, r.code, r.count, r.credits) for r in response.context["reasons"]]
    assert reasons == [("failed", "400", 2, 4), ("abandoned", "404", 1, 4)]
    words = text(response)
    assert "60.0 % of the tasks that ended failed or were abandoned (3 of 5)." in words
    assert "Failed · 400 The image service turned this request down." in words
    assert "Abandoned · 404" in words
    outcomes = {label: (row.count, row.credits) for label, row in response.context["outcomes"]}
    assert outcomes == {
        "Pending": (1, 2),
        "Done": (2, 2),
        "Failed": (2, 4),
        "Abandoned": (1, 4),
        "Deleted while pending": (1, 1),
    }


def test_it_shows_the_image_service_and_the_queue_now(client, alice, staff, settings):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 5
    for status in ["queued", "queued", "queued", "submitting", "waiting", "generating"]:
        make_generation(alice, status=status)
    make_generation(alice, status="downloading")
    client.force_login(staff)
    words = text(client.get(DASHBOARD))
    assert "Running" in words
    assert "3 waiting to be sent" in words
    assert "3 of 5 active tasks allowed" in words
    assert "1 being downloaded" in words

    paused_at = timezone.now() - timedelta(minutes=5)
    ProviderAccount.objects.update_or_create(
        pk=1,
        defaults={
            "pause_reason": ProviderAccount.PauseReason.NO_CREDITS,
            "pause_message": "Insufficient credits on this key",
            "paused_at": paused_at,
        },
    )
    words = text(client.get(DASHBOARD))
    assert "Paused : out of credits" in words
    assert "Insufficient credits on this key" in words
    assert "5 minutes ago" in words


def test_it_shows_who_waits_for_approval_and_the_open_invites(client, alice, bob, staff):
    Registration.objects.update_or_create(pk=1, defaults={"mode": "approval"})
    Approval.objects.create(user=bob)
    Approval.objects.create(user=alice, status=Approval.Status.APPROVED)
    soon = timezone.now() + timedelta(days=2)
    Invite.objects.create(email="dora@example.com", expires_at=soon, created_by=staff)
    Invite.objects.create(created_by=staff)
    Invite.objects.create(expires_at=timezone.now() - timedelta(hours=1), created_by=staff)
    Invite.objects.create(used_at=timezone.now(), used_by=alice, created_by=staff)
    client.force_login(staff)

    response = client.get(DASHBOARD)
    words = text(response)
    assert "Approval: anyone can sign up, staff approve each new account" in words
    assert "1 account waiting for approval Account bob · no address · since" in words
    assert "2 open invites" in words
    assert "Invite dora@example.com · expires in 1 day" in words
    assert "Invite Anyone with the link · never expires" in words
    html = response.content.decode()
    assert f'href="{reverse("accounts:staff")}#pending-title"' in html
    assert f'href="{reverse("accounts:staff")}#invites-title"' in html


@pytest.mark.parametrize(
    "month",
    ["2026-13", "2026-00", "2026-1", "26-11", "nope", "2026-11-01", "1999-12", "3000-01",
     "２０２６-11", "99999-01", "2026/11", "-2026-11"],
)  # fmt: skip
def test_it_reads_the_month_strictly_and_never_fails_on_a_bad_one(client, staff, month):
    client.force_login(staff)
    response = client.get(DASHBOARD, {"month": month})
    assert response.status_code == 400
    this_month = timezone.localdate().replace(day=1)
    assert response.context["month"] == this_month
    assert "is not a month" in text(response) or "Pick a date from 2000 to 2999" in text(response)
    assert f"Showing {this_month:%B %Y} instead." in text(response)


def test_it_shows_this_month_by_default(client, staff):
    client.force_login(staff)
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    assert response.context["month"] == timezone.localdate().replace(day=1)
    assert client.get(DASHBOARD, {"month": ""}).status_code == 200


def test_it_downloads_the_ledger_for_a_range_of_days(client, alice, bob, staff):
    make_entry(alice, datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), task_id="before")
    make_entry(alice, datetime(2026, 11, 1, tzinfo=UTC), task_id="first", credits=2)
    make_entry(bob, datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), task_id="last")
    make_entry(bob, datetime(2026, 12, 1, tzinfo=UTC), task_id="after")
    client.force_login(staff)

    response = client.get(CSV, {"start": "2026-11-01", "end": "2026-11-30"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="ledger-2026-11-01-to-2026-11-30.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["task_id"], r["username"], r["credits"]) for r in rows] == [
        ("first", "alice", "2"),
        ("last", "bob", "1"),
    ]
    one_day = client.get(CSV, {"start": "2026-12-01", "end": "2026-12-01"})
    assert [r["task_id"] for r in csv.DictReader(io.StringIO(one_day.getvalue().decode()))] == [
        "after"
    ]


@pytest.mark.parametrize(
    "query",
    [{}, {"start": "2026-11-01"}, {"start": "2026-11-31", "end": "2026-12-01"},
     {"start": "2026-12-02", "end": "2026-12-01"}, {"start": "2026-1-1", "end": "2026-01-02"},
     {"start": "2999-12-31", "end": "3000-01-01"}, {"start": "0001-01-01", "end": "2026-01-01"},
     {"start": "9999-12-31", "end": "9999-12-31"}, {"start": "today", "end": "tomorrow"}],
)  # fmt: skip
def test_it_reads_the_csv_range_strictly_and_never_fails_on_a_bad_one(client, staff, query):
    client.force_login(staff)
    response = client.get(CSV, query)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert 'class="error' in response.content.decode()


def test_it_is_not_found_for_anyone_but_staff(client, alice):
    urls = [
        DASHBOARD,
        DASHBOARD + "?month=2026-11",
        DASHBOARD + "?month=nope",
        CSV + "?start=2026-11-01&end=2026-11-30",
        CSV,
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("account_login")), (
            url
        )
    client.force_login(alice)
    for url in urls:
        assert client.get(url).status_code == 404, url
    assert "Site usage" not in client.get(USAGE).content.decode()  # not in the nav either


def test_it_links_both_pages_from_the_nav(client, alice, staff):
    client.force_login(alice)
    html = client.get(reverse("gallery:index")).content.decode()
    assert f'href="{USAGE}"' in html and f'href="{DASHBOARD}"' not in html
    client.force_login(staff)
    html = client.get(USAGE).content.decode()
    assert f'<a href="{USAGE}" aria-current="page">Usage</a>' in html
    assert f'href="{DASHBOARD}"' in html
