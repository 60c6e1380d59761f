"""Budgets, caps and rate limits on making generations: who gets which limits, the one helper
every way of making a generation goes through (`gallery.models.reserve`), the messages of a
refusal, queued work held over a lowered budget, and 20 posts at once on PostgreSQL."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gallery import tasks
from gallery.models import Generation, day_words
from ledger.models import (
    Allowance,
    GroupLimits,
    LedgerEntry,
    UserLimits,
    credits_left,
    month_range,
    reserved,
    spent_this_month,
)
from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread
from tests.factories import done_generation, make_entry, make_generation
from tests.support import (
    finished,
    fresh_postgres_database,
    postgres_reachable,
    process_env,
    require,
    run_queued_tasks,
)

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.getenv("BUDGETS_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CREATE = reverse("gallery:create")
pipeline = pytest.mark.django_db(transaction=True)


def post(client, count: int = 1, resolution: str = "1K", prompt: str = "a red kite", **extra):
    data = {
        "prompt": prompt,
        "aspect_ratio": "auto",
        "resolution": resolution,
        "output_format": "png",
        "count": str(count),
    }
    return client.post(CREATE, data, **extra)


def text(response) -> str:
    """The page's words, tags stripped and spaces squeezed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def flashed(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def noon(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time(12)))


def renews() -> str:
    return day_words(month_range(timezone.localdate())[1])


@pytest.fixture
def staff(charlie):
    charlie.is_staff = charlie.is_superuser = True
    charlie.save()
    return charlie


# Who gets which limits


def test_it_takes_the_users_own_limits_over_their_groups_and_those_over_the_default(
    alice, bob, settings
):
    settings.BUDGET_MONTHLY_CREDITS = 100
    settings.MAX_PENDING_PER_USER = 8
    settings.DAILY_GENERATIONS_PER_USER = 0
    renews_on = month_range(timezone.localdate())[1]
    assert Allowance.for_user(alice) == Allowance(100, 8, None, renews_on)

    team, interns, unlimited = (Group.objects.create(name=n) for n in ("team", "interns", "vip"))
    GroupLimits.objects.create(group=team, monthly_credits=300)
    GroupLimits.objects.create(group=interns, monthly_credits=50, daily_generations=10)
    GroupLimits.objects.create(group=unlimited, monthly_credits=0)
    alice.groups.add(team, interns)
    # The most generous of her groups' for each limit; the default where no group sets one.
    assert Allowance.for_user(alice) == Allowance(300, 8, 10, renews_on)
    alice.groups.add(unlimited)  # 0 is no limit: the most generous of all
    assert Allowance.for_user(alice).monthly_credits is None

    # Her own limits win over every group's, a limit at a time; 0 is no limit there too.
    own = UserLimits.objects.create(user=alice, monthly_credits=20, max_pending=0)
    assert Allowance.for_user(alice) == Allowance(20, None, 10, renews_on)
    own.monthly_credits = None
    own.save()
    assert Allowance.for_user(alice).monthly_credits is None  # back to the groups'
    assert Allowance.for_user(bob) == Allowance(100, 8, None, renews_on)


def test_it_lets_an_admin_set_limits_for_a_user_and_a_group(client, alice, staff):
    client.force_login(staff)
    user_page = client.get(reverse("admin:auth_user_change", args=[alice.pk])).content.decode()
    assert 'name="limits-0-monthly_credits"' in user_page
    group = Group.objects.create(name="team")
    group_page = client.get(reverse("admin:auth_group_change", args=[group.pk])).content.decode()
    assert 'name="limits-0-monthly_credits"' in group_page

    response = client.post(
        reverse("admin:ledger_userlimits_add"),
        {"user": alice.pk, "monthly_credits": "40", "max_pending": "", "daily_generations": "3"},
    )
    assert response.status_code == 302
    limits = UserLimits.objects.get(user=alice)
    assert (limits.monthly_credits, limits.max_pending, limits.daily_generations) == (40, None, 3)
    assert Allowance.for_user(alice).daily_generations == 3


# Refusals and their messages


def test_it_refuses_a_post_over_the_budget_with_what_is_left_and_when_it_renews(
    client, alice, settings
):
    settings.BUDGET_MONTHLY_CREDITS = 10
    first, _ = month_range(timezone.localdate())
    make_entry(alice, noon(first - timedelta(days=1)), credits=50)  # last month's
    make_entry(alice, timezone.now(), credits=3, outcome=LedgerEntry.Outcome.FAILED)
    make_entry(alice, timezone.now(), credits=2)
    made = Generation.objects.count()
    client.force_login(alice)

    response = post(client, count=4, resolution="2K", prompt="four castles in the fog")
    assert response.status_code == 400
    assert (
        f"This post needs 8 credits and you have 5 left this month; your budget renews on "
        f"{renews()}." in text(response)
    )
    assert "four castles in the fog</textarea>" in response.content.decode()  # nothing lost
    assert Generation.objects.count() == made

    # Two variations at 2K fit: each counts one, and their price is held until accepted.
    assert post(client, count=2, resolution="2K").status_code == 302
    assert Generation.objects.count() == made + 2
    assert (spent_this_month(alice), reserved(alice), credits_left(alice)) == (5, 4, 1)

    response = post(client, count=2, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#generate-form"
    assert (
        f"This post needs 2 credits and you have 1 left this month; your budget renews on "
        f"{renews()}." in text(response)
    )
    assert post(client, count=1).status_code == 302
    response = post(client, count=1)
    assert "This post needs 1 credit and you have none left this month" in text(response)
    assert credits_left(alice) == 0


def test_it_counts_four_variations_as_four_images_in_the_rate_limit(client, alice, settings):
    settings.RATELIMIT_GENERATE = "5/m"
    settings.MAX_PENDING_PER_USER = 0
    client.force_login(alice)
    assert post(client, count=4).status_code == 302
    response = post(client, count=4, prompt="four more kites")
    assert response.status_code == 400
    words = text(response)
    assert re.search(
        r"That is a lot of images in a short time: you can ask for 1 more now, or for more in "
        r"about \d+ seconds?; your prompt is still here\.",
        words,
    ), words
    assert post(client, count=1).status_code == 302
    words = text(post(client, count=1))
    assert re.search(r"You can generate again in about \d+ seconds?; your prompt is", words)
    assert Generation.objects.count() == 5
    settings.RATELIMIT_GENERATE = "3/m"
    words = text(post(client, count=4))
    assert "At most 3 images can be made in a short time; ask for fewer." in words


def test_it_counts_images_per_address_across_users(client, alice, bob, settings):
    settings.RATELIMIT_GENERATE = "100/m"
    settings.RATELIMIT_GENERATE_ADDRESS = "5/m"
    client.force_login(alice)
    assert post(client, count=4, REMOTE_ADDR="10.0.0.1").status_code == 302
    client.force_login(bob)
    response = post(client, count=2, REMOTE_ADDR="10.0.0.1")
    assert "you can ask for 1 more now" in text(response)
    assert post(client, count=2, REMOTE_ADDR="10.0.0.2").status_code == 302
    # Behind a proxy the address is the one it adds to X-Forwarded-For, as for sign-in.
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    forwarded = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}
    assert "you can ask for 1 more now" in text(post(client, count=2, **forwarded))
    assert post(client, count=1, **forwarded).status_code == 302
    assert Generation.objects.filter(owner=bob).count() == 3


def test_it_counts_two_clients_behind_a_proxy_apart_by_its_client_address_header(
    client, alice, settings
):
    """CLIENT_IP_HEADER: every request comes from the proxy's address, and the proxy says whose
    it is in a header of its own; a client's X-Forwarded-For is then not believed."""
    settings.RATELIMIT_GENERATE = "100/m"
    settings.RATELIMIT_GENERATE_ADDRESS = "3/m"
    settings.ALLAUTH_TRUSTED_CLIENT_IP_HEADER = "X-Real-IP"
    client.force_login(alice)

    def from_client(address: str, **headers):
        return post(client, count=1, REMOTE_ADDR="127.0.0.1", HTTP_X_REAL_IP=address, **headers)

    assert all(from_client("203.0.113.7").status_code == 302 for _ in range(3))
    assert "You can generate again in" in text(from_client("203.0.113.7"))
    forged = from_client("203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.9")
    assert "You can generate again in" in text(forged)
    # The second client has all of its own.
    assert all(from_client("198.51.100.9").status_code == 302 for _ in range(3))
    assert "You can generate again in" in text(from_client("198.51.100.9"))
    assert Generation.objects.count() == 6


def test_it_counts_reruns_and_retries_in_the_rate_limit(client, alice, settings):
    settings.RATELIMIT_GENERATE = "3/m"
    done = done_generation(alice)
    failed = [make_generation(alice, status="failed") for _ in range(2)]
    client.force_login(alice)
    rerun = reverse("gallery:rerun", args=[done.pk])
    assert client.post(rerun).status_code == 302
    assert client.post(rerun).status_code == 302
    assert client.post(reverse("gallery:retry", args=[failed[0].pk])).status_code == 302

    response = client.post(rerun)
    assert response["Location"] == done.get_absolute_url()
    message = flashed(response)[-1]
    assert re.fullmatch(
        r"That is a lot of images in a short time\. You can generate again in about \d+ "
        r"seconds?\.",
        message,
    )
    response = client.post(reverse("gallery:retry", args=[failed[1].pk]))
    assert flashed(response)[-1].startswith("That is a lot of images in a short time.")
    assert Generation.objects.get(pk=failed[1].pk).status == Generation.Status.FAILED
    assert Generation.objects.queued().count() == 3


def test_it_counts_reruns_and_retries_against_the_budget(client, alice, settings):
    settings.BUDGET_MONTHLY_CREDITS = 6
    done = done_generation(alice, resolution="2K")
    failed = make_generation(alice, status="failed", resolution="4K")
    make_entry(alice, timezone.now(), credits=2, generation=done)
    client.force_login(alice)
    assert client.post(reverse("gallery:rerun", args=[done.pk])).status_code == 302
    assert reserved(alice) == 2 and credits_left(alice) == 2

    response = client.post(reverse("gallery:retry", args=[failed.pk]), {"next": "/"})
    assert flashed(response)[-1:] == [
        f"A retry needs 4 credits and you have 2 left this month; your budget renews on {renews()}."
    ]
    # With htmx the card comes back still failed, saying why it was not retried.
    response = client.post(
        reverse("gallery:retry", args=[failed.pk]), headers={"HX-Request": "true"}
    )
    card = response.content.decode()
    assert f'id="card-{failed.pk}"' in card and 'data-status="failed"' in card
    assert "A retry needs 4 credits and you have 2 left this month" in card
    assert Generation.objects.get(pk=failed.pk).status == Generation.Status.FAILED

    assert client.post(reverse("gallery:rerun", args=[done.pk])).status_code == 302
    response = client.post(reverse("gallery:rerun", args=[done.pk]))
    assert flashed(response)[-1:] == [
        f"A re-run needs 2 credits and you have none left this month; your budget renews on "
        f"{renews()}."
    ]
    assert (spent_this_month(alice), reserved(alice)) == (2, 4)


def test_it_refuses_a_post_over_the_pending_cap(client, alice, settings):
    settings.MAX_PENDING_PER_USER = 3
    make_generation(alice, status="generating")
    make_generation(alice, status="downloading")
    done_generation(alice)  # finished: not counted
    client.force_login(alice)
    response = post(client, count=2)
    assert (
        "You have 2 images on their way, and you can have at most 3 at once: ask for 1 or "
        "fewer, or try again when some are done." in text(response)
    )
    assert post(client, count=1).status_code == 302
    assert (
        "You have 3 images on their way, and you can have at most 3 at once; try again when "
        "some are done." in text(post(client, count=1))
    )
    assert Generation.objects.pending().count() == 3


def test_it_refuses_a_post_over_the_daily_cap(client, alice, settings):
    settings.DAILY_GENERATIONS_PER_USER = 5
    today = timezone.localdate()
    for _ in range(3):
        make_entry(alice, noon(today - timedelta(days=1)))  # yesterday's
    make_entry(alice, timezone.now(), outcome=LedgerEntry.Outcome.FAILED)
    make_entry(alice, timezone.now())
    make_generation(alice, status="queued")  # asked for, not accepted yet
    client.force_login(alice)
    assert (
        "This post asks for 3 images and you have 2 left today (of 5); ask for fewer, or make "
        "more tomorrow." in text(post(client, count=3))
    )
    assert post(client, count=2).status_code == 302
    assert "You have used today's 5 images; you can make more tomorrow." in text(post(client))


# Queued work over a lowered budget


@pipeline
def test_it_keeps_queued_work_over_a_lowered_budget_waiting_until_it_is_raised(
    client, alice, bob, staff, settings, simulator
):
    settings.BUDGET_MONTHLY_CREDITS = 10
    simulator.simulator.config.credits = 100
    client.force_login(alice)
    assert post(client, count=3, resolution="2K", prompt="three foxes").status_code == 302
    client.force_login(bob)
    assert post(client, count=1, prompt="bob's owl").status_code == 302
    # An admin lowers alice's budget after her post: one of her three fits now.
    limits = UserLimits.objects.create(user=alice, monthly_credits=3)

    run_queued_tasks()  # until nothing is left to do: the runners do not wait on held work
    mine = list(Generation.objects.filter(owner=alice).order_by("id"))
    assert [g.status for g in mine] == ["done", "queued", "queued"]
    assert [g.over_budget for g in mine] == [False, True, True]
    assert Generation.objects.get(owner=bob).status == Generation.Status.DONE
    held = mine[1:]
    sent = simulator.simulator.status()["tasksByRequestId"]
    assert not any(str(g.request_id) in sent for g in held)
    assert LedgerEntry.objects.filter(user=alice).total_credits() == 2

    client.force_login(alice)
    words = text(client.get(reverse("gallery:index")))
    assert (
        f"Waiting Over your monthly budget: it will be sent when the budget renews on "
        f"{renews()}, or when it is raised." in words
    )
    detail = text(client.get(held[0].get_absolute_url()))
    assert f"Waiting: over your monthly budget, which renews on {renews()}" in detail
    # A new post is refused: the held work is still reserved.
    assert "This post needs 1 credit and you have none left" in text(post(client))
    tasks.reconcile()  # still no room: they stay as they are
    assert Generation.objects.over_budget().count() == 2

    # Raised in the admin: they go at once.
    client.force_login(staff)
    response = client.post(
        reverse("admin:ledger_userlimits_change", args=[limits.pk]),
        {"user": alice.pk, "monthly_credits": "8", "max_pending": "", "daily_generations": ""},
    )
    assert response.status_code == 302
    run_queued_tasks(until=finished(*held))
    assert [g.status for g in Generation.objects.filter(owner=alice)] == ["done"] * 3
    assert not Generation.objects.filter(over_budget=True).exists()
    assert LedgerEntry.objects.filter(user=alice).total_credits() == 6
    assert simulator.simulator.status()["credits"] == 100 - 6 - 1


def test_it_sends_held_work_again_once_the_budget_has_room(alice, settings):
    settings.BUDGET_MONTHLY_CREDITS = 4
    waiting = [make_generation(alice, status="queued", resolution="2K") for _ in range(2)]
    make_entry(alice, timezone.now(), credits=3)
    assert Generation.objects.claim_for_submission(timezone.now(), 5) == []
    assert Generation.objects.over_budget().count() == 2
    assert not tasks.has_submission_work(timezone.now())

    settings.BUDGET_MONTHLY_CREDITS = 5  # raised: room for one of them
    assert Generation.objects.release_fitting_holds() == 2
    claimed = [g.pk for g, _ in Generation.objects.claim_for_submission(timezone.now(), 5)]
    assert claimed == [waiting[0].pk]  # 3 + 2 fits 5; the second waits again
    assert list(Generation.objects.over_budget()) == [waiting[1]]


def test_it_checks_budgets_with_one_aggregate_query_per_claim_batch(alice, bob, charlie, settings):
    def claim(limit: int) -> tuple[int, int]:
        # A minute apart, so the create rate's pacing never holds a claim back.
        now = timezone.now() + timedelta(minutes=len(claimed))
        with CaptureQueriesContext(connection) as queries:
            claimed.append(len(Generation.objects.claim_for_submission(now, limit)))
        ledger = [q for q in queries.captured_queries if "ledger_ledgerentry" in q["sql"]]
        return len(queries), len(ledger)

    claimed: list[int] = []
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 20
    for user in (alice, bob, charlie):
        for _ in range(6):
            make_generation(user, status="queued")
    claim(1)  # the first claim makes the provider account's row
    for limit in (1, 6):
        settings.BUDGET_MONTHLY_CREDITS = 0
        without, ledger = claim(limit)
        assert ledger == 0  # no budget: the ledger is not read
        settings.BUDGET_MONTHLY_CREDITS = 100
        # One aggregate query more, however many generations and owners the batch has.
        assert claim(limit) == (without + 1, 1)
    assert claimed == [1, 1, 1, 6, 6]


# Twenty posts at once on PostgreSQL

POSTS = 20
BUDGET = 23
RACE = """
import json, threading
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import setup_test_environment
from gallery.models import Generation
from ledger.models import LedgerEntry, UserLimits, price, reserved
from tests.support import run_queued_tasks

setup_test_environment()
rita = User.objects.create_user("rita", password="x")
UserLimits.objects.create(user=rita, monthly_credits=%(budget)d)
posts = json.loads('%(posts)s')
start = threading.Barrier(len(posts))
answers = [None] * len(posts)

def send(i, count, resolution, prompt):
    client = Client()
    client.force_login(rita)
    data = {"prompt": prompt, "aspect_ratio": "auto", "resolution": resolution,
            "output_format": "png", "count": str(count)}
    start.wait()
    try:
        response = client.post("/generations/new/", data)
        answers[i] = [response.status_code, "This post needs" in response.content.decode()]
    finally:
        connection.close()

threads = [threading.Thread(target=send, args=(i, *p)) for i, p in enumerate(posts)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
held = reserved(rita)
# Until everything has ended, or waits over the budget (which, overspent, some would).
unfinished = Generation.objects.pending().exclude(status="queued", over_budget=True)
run_queued_tasks(until=lambda: not unfinished.exists(), seconds=120)
made = list(Generation.objects.all())
entries = LedgerEntry.objects.all()
print(json.dumps({
    "answers": answers,
    "reserved": held,
    "made": [[g.prompt, g.status] for g in made],
    "accepted": sum(price(g.resolution).credits for g in made if g.task_id),
    "ledger": entries.total_credits(),
    "failed": [e.credits for e in entries.filter(outcome="failed")],
}))
"""


@pytest.fixture
def postgres_database():
    """A fresh PostgreSQL database for one test, dropped after it (skipped without one, and
    a failure then with BANANA_REQUIRE_ALL=1)."""
    require(*postgres_reachable(PG_URL))
    with fresh_postgres_database(PG_URL, "banana_budgets") as url:
        yield url


def test_it_never_reserves_more_than_the_budget_for_20_posts_at_once_on_postgresql(
    postgres_database, tmp_path
):
    """Twenty threads, each with its own connection, post at the same moment through the
    real view; the posts ask for 1 to 4 images at 1K or 2K, and a fifth of them for images
    the image service will fail. Then the real submission path runs against the simulator."""
    posts = [
        (1 + i % 4, "2K" if i % 3 == 0 else "1K", f"race {i}" + (" [sim:fail]" * (i % 5 == 0)))
        for i in range(POSTS)
    ]
    costs = [count * {"1K": 1, "2K": 2}[resolution] for count, resolution, _ in posts]
    simulator = start_in_thread(SimulatorConfig(speed=0.02, seed=7, credits=1000))
    env = {
        **process_env(),
        "DATABASE_URL": postgres_database,
        "REDIS_URL": "",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "AIGPTIMAGE_BASE_URL": simulator.base_url,
        "AIGPTIMAGE_API_KEY": DEFAULT_API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator.base_url.removeprefix("http://"),
        "AIGPTIMAGE_CREATE_RATE": "4",
        "AIGPTIMAGE_POLL_INTERVAL": "0.05",
        "AIGPTIMAGE_POLL_MAX_INTERVAL": "0.1",
        "AIGPTIMAGE_RETRY_BASE": "0.01",
        "AIGPTIMAGE_CONFLICT_WAIT": "0.05",
        "RUNNER_SECONDS": "0.5",
        "RUNNER_LEASE": "2",
        "RUNNER_HANDOVER_TURNS": "0",
        # Only the budget binds here.
        "RATELIMIT_GENERATE": "",
        "RATELIMIT_GENERATE_ADDRESS": "",
        "MAX_PENDING_PER_USER": "0",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    try:
        subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True)
        code = RACE % {"budget": BUDGET, "posts": json.dumps(posts)}
        done = subprocess.run(
            [*manage, "shell", "-c", code], env=env, capture_output=True, text=True, timeout=170
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        status = simulator.simulator.status()
    finally:
        simulator.shutdown()
        simulator.server_close()

    answers = result["answers"]
    made = [cost for cost, (code, _) in zip(costs, answers, strict=True) if code == 302]
    refused = [cost for cost, (code, _) in zip(costs, answers, strict=True) if code == 400]
    assert len(made) + len(refused) == POSTS and refused
    assert all(said for code, said in answers if code == 400)  # refused for the budget
    # Never more than the budget, and each refused post would have gone over it.
    assert result["reserved"] == sum(made) <= BUDGET
    assert all(sum(made) + cost > BUDGET for cost in refused)
    assert len(result["made"]) == sum(posts[i][0] for i, (c, _) in enumerate(answers) if c == 302)

    # The ledger's total is what the accepted tasks cost, the failed ones' included, and
    # what the image service charged.
    statuses = {status for _, status in result["made"]}
    assert statuses <= {"done", "failed"}
    failing = sum(1 for prompt, _ in result["made"] if "[sim:fail]" in prompt)
    assert len(result["failed"]) == failing
    assert result["ledger"] == result["accepted"] == result["reserved"]
    assert 1000 - status["credits"] == result["ledger"]
