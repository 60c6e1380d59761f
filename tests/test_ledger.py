"""The cost ledger: an entry per task the image service accepted, its outcome, its sums.

The pipeline tests run generations through the real django-q2 queue against the simulator,
whose credit balance says what it charged; the rest write entries with tests/factories.py.
"""

from __future__ import annotations

import csv
import io
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from banana_site.settings import envdecimal, envprices
from gallery import provider, tasks
from gallery.models import Generation
from ledger.export import csv_response
from ledger.models import AppendOnlyError, LedgerEntry, Price, Totals, month_range, price
from simulator.state import CREDIT_COST
from tests.factories import make_entry, make_generation
from tests.support import finished, run_queued_tasks

Outcome = LedgerEntry.Outcome
pipeline = pytest.mark.django_db(transaction=True)


def generate(user, prompt: str, **settings) -> Generation:
    generation = Generation.objects.create(owner=user, prompt=prompt, **settings)
    tasks.wake_submission()
    return generation


def entries_of(generation: Generation) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(generation_pk=generation.pk).order_by("id"))


def tasks_for(simulator, generation: Generation) -> list[str]:
    return simulator.simulator.status()["tasksByRequestId"].get(str(generation.request_id), [])


# The pipeline


@pipeline
def test_it_writes_one_entry_at_the_resolutions_price_and_settles_it_done(alice, simulator):
    generation = generate(alice, "a red fox in snow", resolution="2K")
    with CaptureQueriesContext(connection) as queries:
        run_queued_tasks(until=finished(generation))

    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    [entry] = entries_of(generation)
    assert entry.user == alice
    assert entry.generation == generation
    assert entry.task_id == generation.task_id == tasks_for(simulator, generation)[0]
    assert (entry.resolution, entry.credits) == ("2K", 2)
    assert (entry.money, entry.currency) == (None, "")
    assert entry.accepted_at == generation.submitted_at
    assert entry.outcome == Outcome.DONE
    assert entry.outcome_at >= generation.finished_at - timedelta(seconds=1)
    # One INSERT when accepted and one UPDATE when stored; none for each of its polls.
    assert generation.poll_count >= 1
    ledger = [q["sql"] for q in queries.captured_queries if '"ledger_ledgerentry"' in q["sql"]]
    assert [sql.split(" ")[0] for sql in ledger] == ["INSERT", "UPDATE"]


@pipeline
def test_it_keeps_the_entry_of_a_task_that_failed_with_the_reason(alice, simulator):
    generation = generate(alice, "not allowed [sim:fail]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    [entry] = entries_of(generation)
    assert (entry.outcome, entry.outcome_code, entry.credits) == (Outcome.FAILED, "400", 1)
    assert entry.outcome_reason == generation.fail_message
    assert entry.outcome_reason.startswith("The image service could not make this image.")
    assert entry.generation == generation


@pipeline
@pytest.mark.parametrize("code", ["400", "422"])
def test_it_writes_no_entry_for_a_request_turned_down(alice, simulator, code):
    generation = generate(alice, f"refused [sim:{code}]")
    run_queued_tasks(until=finished(generation))
    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.FAILED
    assert tasks_for(simulator, generation) == []
    assert not LedgerEntry.objects.exists()


@pipeline
@pytest.mark.parametrize("marker", ["409=1", "429=1", "401=1", "402=1"])
def test_it_writes_the_entry_only_once_the_task_is_accepted(alice, simulator, marker):
    generation = Generation.objects.create(owner=alice, prompt=f"not yet [sim:{marker}]")
    batch = Generation.objects.claim_for_submission(timezone.now(), 1)
    runner = tasks.Runner("submit", "submit:0", "test")
    with ThreadPoolExecutor(1) as pool:
        outcomes = tasks.send_batch(batch, provider.get_client(), pool, runner)
    assert outcomes == [tasks.SubmitOutcome.HOLD]
    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.QUEUED
    assert not LedgerEntry.objects.exists()

    tasks.wake_submission()
    run_queued_tasks(until=finished(generation))
    [entry] = entries_of(generation)
    assert entry.outcome == Outcome.DONE
    assert tasks_for(simulator, generation) == [entry.task_id]


@pipeline
def test_it_writes_one_entry_when_a_reconcile_finds_the_task_by_request_id(alice, simulator):
    generation = Generation.objects.create(owner=alice, prompt="orphaned")
    Generation.objects.claim_for_submission(timezone.now(), 1)
    # The worker sent createTask and died before writing the answer down; its claim lapsed.
    task_id = provider.get_client().create_task("orphaned", request_id=str(generation.request_id))
    Generation.objects.filter(pk=generation.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    [entry] = entries_of(generation)
    assert entry.task_id == task_id
    assert entry.outcome == Outcome.DONE


def test_it_writes_one_entry_for_a_task_recorded_twice(alice):
    generation = make_generation(alice, status=Generation.Status.SUBMITTING, resolution="4K")
    stale = Generation.objects.get(pk=generation.pk)
    assert generation.mark_submitted("task-1")
    # A slow worker records the same task after a reconcile had requeued and resent it.
    Generation.objects.filter(pk=generation.pk).update(status=Generation.Status.SUBMITTING)
    assert stale.mark_submitted("task-1")
    assert not stale.mark_submitted("task-1")  # now it is at the provider
    assert tasks.apply_submission(stale, "task-1") is tasks.SubmitOutcome.ACCEPTED
    [entry] = entries_of(generation)
    assert (entry.task_id, entry.credits, entry.outcome) == ("task-1", 4, Outcome.PENDING)


@pipeline
def test_it_gives_a_retry_an_entry_of_its_own_and_keeps_the_first(alice, simulator, settings):
    # The first try outlives its deadline: abandoned, charged all the same.
    simulator.simulator.config.speed = 1.0
    settings.AIGPTIMAGE_TASK_DEADLINE = 0.3
    generation = generate(alice, "takes forever, then not")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.fail_code == "timeout"

    simulator.simulator.config.speed = 0.02
    settings.AIGPTIMAGE_TASK_DEADLINE = 1800.0
    assert generation.retry()
    tasks.wake_submission()
    run_queued_tasks(until=finished(generation))
    first, second = entries_of(generation)
    assert (first.outcome, first.outcome_code) == (Outcome.ABANDONED, "timeout")
    assert "took too long" in first.outcome_reason
    assert second.outcome == Outcome.DONE
    assert first.task_id != second.task_id
    assert len(tasks_for(simulator, generation)) == 1  # the retry's own request id
    assert LedgerEntry.objects.by_generation()[0][:4] == (generation.pk, generation.pk, 2, 2)


@pipeline
def test_it_totals_what_the_simulator_charged_with_failures_kept(alice, bob, simulator):
    simulator.simulator.config.credits = 100
    asked = [
        generate(alice, "fine"),
        generate(bob, "fine and bigger", resolution="2K"),
        generate(alice, "flaky at first [sim:500=1]"),
        generate(bob, "not allowed [sim:fail]"),
        generate(alice, "not allowed, dearer [sim:fail]", resolution="4K"),
        generate(bob, "forgotten [sim:query404]", resolution="2K"),
        generate(alice, "turned down, never charged [sim:400]", resolution="4K"),
    ]
    run_queued_tasks(until=finished(*asked), seconds=30)

    spent = 100 - simulator.simulator.config.credits
    assert spent == 1 + 2 + 1 + 1 + 4 + 2
    assert LedgerEntry.objects.total_credits() == spent
    accepted = Generation.objects.exclude(task_id="")
    assert sum(CREDIT_COST[g.resolution] for g in accepted) == spent
    by_outcome = LedgerEntry.objects.by_outcome()
    assert by_outcome[Outcome.DONE][:2] == (4, 3)
    assert by_outcome[Outcome.FAILED][:2] == (5, 2)
    assert by_outcome[Outcome.ABANDONED][:2] == (2, 1)
    assert by_outcome[Outcome.PENDING] == by_outcome[Outcome.DELETED] == Totals()
    reasons = {(r.outcome, r.code): r.count for r in LedgerEntry.objects.failure_reasons()}
    assert reasons == {(Outcome.FAILED, "400"): 2, (Outcome.ABANDONED, "404"): 1}
    assert [(u.username, u.credits) for u in LedgerEntry.objects.by_user()] == [
        ("alice", 6),
        ("bob", 5),
    ]


# Deleting


def accepted(user, task_id: str, **fields) -> Generation:
    generation = make_generation(user, status=Generation.Status.SUBMITTING, **fields)
    assert generation.mark_submitted(task_id)
    return generation


def test_it_keeps_the_entries_of_deleted_generations_with_their_outcome(client, alice):
    done = accepted(alice, "task-done")
    Generation.objects.filter(pk=done.pk).update(status=Generation.Status.DOWNLOADING)
    assert done.mark_done()
    pending = accepted(alice, "task-pending", resolution="2K")
    forgotten = accepted(alice, "task-forgotten")
    assert forgotten.mark_abandoned("The image service no longer knows this request.", "404")

    client.force_login(alice)
    client.post(reverse("gallery:delete", args=[done.pk]))
    ids = [pending.pk, forgotten.pk]
    client.post(reverse("gallery:bulk"), {"action": "delete", "ids": ids, "confirm": "1"})
    assert not Generation.objects.exists()

    entries = {e.task_id: e for e in LedgerEntry.objects.all()}
    assert {task: e.outcome for task, e in entries.items()} == {
        "task-done": Outcome.DONE,
        "task-pending": Outcome.DELETED,
        "task-forgotten": Outcome.ABANDONED,
    }
    assert entries["task-pending"].outcome_at is not None
    assert entries["task-forgotten"].outcome_code == "404"
    assert all(e.generation is None for e in entries.values())
    assert entries["task-pending"].generation_pk == pending.pk
    assert LedgerEntry.objects.for_user(alice).total_credits() == 4


def test_it_keeps_the_entries_when_the_admin_deletes_a_generation(admin_client, alice):
    generation = accepted(alice, "task-1")
    admin_client.post(
        reverse("admin:gallery_generation_delete", args=[generation.pk]), {"post": "yes"}
    )
    assert not Generation.objects.exists()
    entry = LedgerEntry.objects.get()
    assert (entry.outcome, entry.generation_pk) == (Outcome.DELETED, generation.pk)


def test_it_refuses_to_delete_a_user_who_was_charged(alice, bob):
    accepted(alice, "task-1")
    with pytest.raises(ProtectedError):
        alice.delete()
    bob.delete()  # never charged: nothing to keep


# The price table


def test_it_prices_from_the_table_and_keeps_the_price_of_then(alice, settings):
    settings.PRICE_CREDITS = {"1K": 3, "2K": 5, "4K": 9}
    settings.PRICE_PER_CREDIT = Decimal("0.05")
    settings.PRICE_CURRENCY = "EUR"
    assert price("2K") == Price(5, Decimal("0.25"), "EUR")
    before = accepted(alice, "task-1", resolution="2K")

    settings.PRICE_CREDITS = {"1K": 1, "2K": 7, "4K": 4}
    settings.PRICE_PER_CREDIT = None
    after = accepted(alice, "task-2", resolution="2K")
    [old] = entries_of(before)
    assert (old.credits, old.money, old.currency) == (5, Decimal("0.25"), "EUR")
    [new] = entries_of(after)
    assert (new.credits, new.money, new.currency) == (7, None, "")
    assert LedgerEntry.objects.totals() == Totals(12, 2, Decimal("0.25"))


def test_it_reads_the_price_table_from_the_environment(monkeypatch, settings):
    assert settings.PRICE_CREDITS == CREDIT_COST  # the simulator's costs by default
    assert settings.PRICE_PER_CREDIT is None

    monkeypatch.setenv("PRICE_CREDITS", " 2K=3, 4k=8 ")
    assert envprices("PRICE_CREDITS", "1K=1,2K=2,4K=4") == {"1K": 1, "2K": 3, "4K": 8}
    for wrong in ["8K=2", "2K=two", "2K=-1", "2K"]:
        monkeypatch.setenv("PRICE_CREDITS", wrong)
        with pytest.raises(ValueError, match="PRICE_CREDITS"):
            envprices("PRICE_CREDITS", "1K=1,2K=2,4K=4")

    monkeypatch.setenv("PRICE_PER_CREDIT", "0.04")
    assert envdecimal("PRICE_PER_CREDIT") == Decimal("0.04")
    monkeypatch.setenv("PRICE_PER_CREDIT", "")
    assert envdecimal("PRICE_PER_CREDIT") is None
    for wrong in ["-1", "abc", "NaN", "Infinity"]:
        monkeypatch.setenv("PRICE_PER_CREDIT", wrong)
        with pytest.raises(ValueError, match="PRICE_PER_CREDIT"):
            envdecimal("PRICE_PER_CREDIT")


# Append-only


def test_it_never_changes_a_price_or_deletes_an_entry(alice):
    generation = accepted(alice, "task-1")
    entry = LedgerEntry.objects.get()
    entry.credits = 0
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        LedgerEntry.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        LedgerEntry.objects.update(credits=0, money=0)
    assert LedgerEntry.objects.get().credits == 1

    # The outcome moves once, from pending to a final one.
    assert generation.mark_abandoned("The image service took too long.", "timeout")
    assert LedgerEntry.objects.settle(Outcome.DONE) == 0
    entry = LedgerEntry.objects.get()
    assert (entry.outcome, entry.outcome_code) == (Outcome.ABANDONED, "timeout")


def test_it_shows_the_ledger_in_the_admin_read_only(admin_client, alice):
    accepted(alice, "task-1")
    entry = LedgerEntry.objects.get()
    page = admin_client.get(reverse("admin:ledger_ledgerentry_changelist"))
    assert page.status_code == 200 and "alice" in page.content.decode()
    assert "delete_selected" not in page.content.decode()
    assert admin_client.get(reverse("admin:ledger_ledgerentry_add")).status_code == 403
    change = reverse("admin:ledger_ledgerentry_change", args=[entry.pk])
    view = admin_client.get(change)
    assert view.status_code == 200 and 'name="_save"' not in view.content.decode()
    assert admin_client.post(change, {"credits": "0"}).status_code == 403
    delete = reverse("admin:ledger_ledgerentry_delete", args=[entry.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert LedgerEntry.objects.get().credits == 1


# Sums for the usage page, the budgets and the dashboard


def at(day: int, hour: int = 12, month: int = 12, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def test_it_sums_per_user_month_day_and_outcome(alice, bob):
    make_entry(alice, at(30, month=11), credits=4)
    make_entry(alice, at(1), credits=1)
    make_entry(alice, at(1, 20), credits=2, outcome=Outcome.FAILED, outcome_code="400")
    make_entry(alice, at(3), credits=4, outcome=Outcome.PENDING)
    make_entry(bob, at(2), credits=2, outcome=Outcome.ABANDONED, outcome_code="404")
    make_entry(bob, at(1, month=1, year=2027), credits=1)
    entries = LedgerEntry.objects

    assert month_range(date(2026, 12, 24)) == (date(2026, 12, 1), date(2027, 1, 1))
    december = entries.in_month(date(2026, 12, 24))
    assert december.totals() == Totals(9, 4, None)
    assert december.for_user(alice).total_credits() == 7
    assert entries.in_month(at(5, month=1, year=2027)).total_credits() == 1
    assert entries.between(date(2026, 12, 1), date(2026, 12, 3)).total_credits() == 5
    assert entries.between(at(1, 13), at(3)).total_credits() == 4  # from 13:00 on the 1st
    assert entries.none().totals() == Totals(0, 0, None)

    assert december.by_day() == {
        date(2026, 12, 1): Totals(3, 2, None),
        date(2026, 12, 2): Totals(2, 1, None),
        date(2026, 12, 3): Totals(4, 1, None),
    }
    # A chart's series: every day of the range, zero where nothing was accepted.
    series = entries.for_user(bob).by_day(date(2026, 12, 1), date(2026, 12, 4))
    assert list(series.values()) == [Totals(), Totals(2, 1, None), Totals()]

    assert [(u.username, u.credits, u.count) for u in december.by_user()] == [
        ("alice", 7, 3),
        ("bob", 2, 1),
    ]
    assert december.by_outcome() == {
        Outcome.PENDING: Totals(4, 1, None),
        Outcome.DONE: Totals(1, 1, None),
        Outcome.FAILED: Totals(2, 1, None),
        Outcome.ABANDONED: Totals(2, 1, None),
        Outcome.DELETED: Totals(),
    }
    assert december.failures().count() == 2
    assert [(r.outcome, r.code, r.credits) for r in december.failure_reasons()] == [
        (Outcome.ABANDONED, "404", 2),
        (Outcome.FAILED, "400", 2),
    ]


def test_it_counts_days_and_months_in_the_current_time_zone(alice):
    make_entry(alice, datetime(2026, 11, 30, 23, 30, tzinfo=UTC), credits=2)
    with timezone.override(zoneinfo.ZoneInfo("Europe/Berlin")):  # 00:30 on 1 December there
        assert LedgerEntry.objects.in_month(date(2026, 12, 1)).total_credits() == 2
        assert list(LedgerEntry.objects.by_day()) == [date(2026, 12, 1)]
    assert LedgerEntry.objects.in_month(date(2026, 12, 1)).total_credits() == 0


# Export


def test_it_exports_a_date_range_as_csv(alice, bob):
    bob.username = "+bob"  # a name a spreadsheet would take for a formula
    bob.save()
    make_entry(alice, at(2), credits=2, resolution="2K", money=Decimal("0.1"), currency="EUR")
    failed = make_entry(
        bob,
        at(1),
        outcome=Outcome.FAILED,
        outcome_code="400",
        outcome_reason="The image service said: “no”.",
        task_id="=HYPERLINK(1)",
    )
    make_entry(alice, at(1, month=1, year=2027))  # outside the range

    response = csv_response(
        LedgerEntry.objects.between(date(2026, 12, 1), date(2027, 1, 1)), "ledger-2026-12.csv"
    )
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="ledger-2026-12.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == [
        "accepted_at",
        "username",
        "generation_id",
        "task_id",
        "resolution",
        "credits",
        "money",
        "currency",
        "outcome",
        "reason_code",
        "reason",
        "outcome_at",
    ]
    assert rows[1] == [
        "2026-12-01T12:00:00+00:00",
        "'+bob",
        str(failed.generation_pk),
        "'=HYPERLINK(1)",
        "1K",
        "1",
        "",
        "",
        "failed",
        "400",
        "The image service said: “no”.",
        "2026-12-01T12:01:00+00:00",
    ]
    assert rows[2][1:] == [
        "alice",
        rows[2][2],
        rows[2][3],
        "2K",
        "2",
        "0.100000",
        "EUR",
        "done",
        "",
        "",
        "2026-12-02T12:01:00+00:00",
    ]
    assert len(rows) == 3
