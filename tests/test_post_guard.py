"""The double-charge guard: a form sent twice (a double click, a resubmit, a replay, two web
processes at once) is made once, and a prompt its owner already has an image of is not made
again unless they say so."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule
from django_ratelimit.core import get_usage

from gallery import tasks
from gallery.models import Generation, Post, request_fingerprint
from ledger.models import UserLimits, reserved
from tests.factories import done_generation, make_generation
from tests.support import fresh_postgres_database, postgres_reachable, process_env, require

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.getenv("BUDGETS_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CREATE = reverse("gallery:create")
HTMX = {"HTTP_HX_REQUEST": "true"}


def form_data(key: str | uuid.UUID | None = None, **changes) -> dict:
    data = {
        "prompt": "a red kite over the dunes",
        "aspect_ratio": "3:2",
        "resolution": "1K",
        "output_format": "png",
        "count": "2",
        **changes,
    }
    if key is not None:
        data["key"] = str(key)
    return data


def rendered_key(html: str) -> str:
    keys = re.findall(r'<input type="hidden" name="key" value="([0-9a-f-]{36})"', html)
    assert len(keys) == 1, keys
    return keys[0]


def card_ids(html: str) -> list[str]:
    return re.findall(r'<article id="card-(\d+)"', html)


def images_asked(user) -> int:
    usage = get_usage(None, group="generate", key=lambda group, request: str(user.pk), rate="100/m")
    return usage["count"]


# The same form twice


def test_it_renders_a_new_key_in_every_form(client, alice):
    client.force_login(alice)
    first = rendered_key(client.get("/").content.decode())
    second = rendered_key(client.get("/").content.decode())
    assert first != second
    # The fresh form that comes back after a post has a new one too.
    made = client.post(CREATE, form_data(first), **HTMX).content.decode()
    assert rendered_key(made) not in (first, second)


def test_it_makes_a_form_sent_twice_once_and_charges_it_once(client, alice, settings):
    settings.RATELIMIT_GENERATE = "100/m"
    # Room for one post of two 1K images: a second making would be refused for the budget.
    UserLimits.objects.create(user=alice, monthly_credits=2)
    client.force_login(alice)
    key = rendered_key(client.get("/").content.decode())
    for _ in range(3):
        response = client.post(CREATE, form_data(key))
        assert response.status_code == 302 and response["Location"] == "/"
    generations = list(Generation.objects.all())
    assert len(generations) == 2
    assert {g.post for g in generations} == {uuid.UUID(key)}
    assert Post.objects.filter(owner=alice).count() == 1
    assert reserved(alice) == 2
    assert images_asked(alice) == 2


def test_it_answers_a_second_htmx_sending_with_the_same_cards(client, alice):
    client.force_login(alice)
    key = uuid.uuid4()
    first = client.post(CREATE, form_data(key), **HTMX).content.decode()
    again = client.post(CREATE, form_data(key), **HTMX).content.decode()
    assert card_ids(first) == card_ids(again)
    assert len(card_ids(first)) == 2
    assert Generation.objects.count() == 2


def test_it_makes_a_form_again_after_a_refusal_with_the_same_key(client, alice, settings):
    """A refused post made nothing, so sending it again once the limit allows it makes it."""
    limits = UserLimits.objects.create(user=alice, monthly_credits=1)
    client.force_login(alice)
    key = uuid.uuid4()
    refused = client.post(CREATE, form_data(key))
    assert refused.status_code == 400
    assert "This post needs 2 credits and you have 1 left this month" in refused.content.decode()
    # The form comes back with its key: the same post, not yet made.
    assert rendered_key(refused.content.decode()) == str(key)
    assert not Post.objects.exists()
    limits.monthly_credits = 10
    limits.save()
    assert client.post(CREATE, form_data(key)).status_code == 302
    assert Generation.objects.count() == 2


def test_it_does_not_make_a_post_again_after_its_images_are_deleted(client, alice):
    client.force_login(alice)
    key = uuid.uuid4()
    client.post(CREATE, form_data(key))
    Generation.objects.all().delete_with_files()
    assert client.post(CREATE, form_data(key)).status_code == 302
    htmx = client.post(CREATE, form_data(key), **HTMX)
    assert htmx.status_code == 200 and card_ids(htmx.content.decode()) == []
    assert not Generation.objects.exists()


def test_it_prunes_form_keys_after_the_days_they_are_kept(client, alice, settings):
    settings.POST_KEYS_KEPT_DAYS = 30
    client.force_login(alice)
    old, fresh = uuid.uuid4(), uuid.uuid4()
    for key in (old, fresh):
        client.post(CREATE, form_data(key, prompt=f"prompt {key}"))
    Post.objects.filter(key=old).update(created_at=timezone.now() - timedelta(days=31))
    Post.objects.filter(key=fresh).update(created_at=timezone.now() - timedelta(days=29))
    assert tasks.prune() == 1
    assert list(Post.objects.values_list("key", flat=True)) == [fresh]
    assert tasks.prune() == 0
    # Within the days kept, the same form makes nothing; past them, it is a new post.
    Generation.objects.all().delete_with_files()
    client.post(CREATE, form_data(fresh, prompt=f"prompt {fresh}"))
    assert not Generation.objects.exists()
    client.post(CREATE, form_data(old, prompt=f"prompt {old}"))
    assert Generation.objects.count() == 2


@pytest.mark.django_db
def test_it_prunes_once_a_day_by_a_schedule():
    schedule = Schedule.objects.get(name="gallery.prune")
    assert (schedule.func, schedule.schedule_type, schedule.repeats) == (
        "gallery.tasks.prune",
        Schedule.DAILY,
        -1,
    )


def test_it_keeps_keys_apart_per_user(client, alice, bob):
    key = uuid.uuid4()
    for user in (alice, bob):
        client.force_login(user)
        assert client.post(CREATE, form_data(key)).status_code == 302
    assert Generation.objects.filter(owner=alice).count() == 2
    assert Generation.objects.filter(owner=bob).count() == 2


@pytest.mark.parametrize("key", [None, "", "not-a-key"])
def test_it_gives_a_form_without_a_good_key_one_of_its_own(client, alice, key):
    """A page rendered before there were keys (or a script) still posts; the form rendered
    again after it has a key, so it is guarded from then on."""
    client.force_login(alice)
    data = form_data(prompt="")
    if key is not None:
        data["key"] = key
    response = client.post(CREATE, data)
    assert response.status_code == 400
    assert "Write a prompt" in response.content.decode()
    fresh = rendered_key(response.content.decode())
    assert fresh != key
    for _ in range(2):
        assert client.post(CREATE, form_data(fresh)).status_code == 302
    assert Generation.objects.count() == 2


# Already made


@pytest.fixture
def kite(alice) -> Generation:
    return done_generation(
        alice, "A  red kite over\nthe DUNES ", aspect_ratio="3:2", resolution="1K"
    )


def test_it_says_when_the_same_image_was_made_already_and_keeps_the_prompt(client, alice, kite):
    client.force_login(alice)
    key = uuid.uuid4()
    response = client.post(CREATE, form_data(key))
    assert response.status_code == 200
    html = response.content.decode()
    assert "You already have this image" in html
    image = kite.images.get()
    assert f'src="{image.thumbnail_url}"' in html
    assert re.search(rf'<a class="button" href="{kite.get_absolute_url()}">Open it</a>', html)
    assert re.search(r'<button type="submit" name="again" value="1"[^>]*>Generate again', html)
    assert "a red kite over the dunes</textarea>" in html  # the prompt as typed
    assert rendered_key(html) == str(key)
    assert Generation.objects.count() == 1 and not Post.objects.exists()

    # "Generate again anyway" goes ahead, once.
    for _ in range(2):
        assert client.post(CREATE, form_data(key, again="1")).status_code == 302
    assert Generation.objects.count() == 3


def test_it_says_so_in_the_composer_for_htmx(client, alice, kite):
    client.force_login(alice)
    response = client.post(CREATE, form_data(uuid.uuid4()), **HTMX)
    assert response["HX-Retarget"] == "#generate-form"
    assert response["HX-Reswap"] == "outerHTML"
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="generate-form"')
    assert "You already have this image" in html and "Generate again anyway" in html
    again = client.post(CREATE, form_data(rendered_key(html), again="1"), **HTMX)
    assert len(card_ids(again.content.decode())) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "a red kite over the dune"},
        {"aspect_ratio": "1:1"},
        {"resolution": "2K"},
        {"output_format": "jpg"},
    ],
)
def test_it_makes_a_prompt_or_settings_that_differ(client, alice, kite, changes):
    client.force_login(alice)
    assert client.post(CREATE, form_data(uuid.uuid4(), **changes)).status_code == 302
    assert Generation.objects.count() == 3


def test_it_counts_only_finished_images_of_the_same_user(client, alice, bob):
    for status in ("failed", "generating"):
        make_generation(alice, "a red kite over the dunes", status, aspect_ratio="3:2")
    done_generation(bob, "a red kite over the dunes", aspect_ratio="3:2")
    client.force_login(alice)
    assert client.post(CREATE, form_data(uuid.uuid4())).status_code == 302
    assert Generation.objects.filter(owner=alice).count() == 4


def test_it_finds_the_image_made_already_with_one_indexed_query(alice, kite):
    from gallery.forms import GenerationForm

    form = GenerationForm(form_data(uuid.uuid4(), prompt="something new"))
    assert form.is_valid()
    with CaptureQueriesContext(connection) as queries:
        assert form.already_made(alice) is None
    assert len(queries) == 1
    sql = queries[0]["sql"]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql)
        else:
            # A test table is small enough for a scan: ask whether the index can serve it.
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "gen_owner_fingerprint" in plan, plan


def test_it_fingerprints_the_generations_made_before_the_guard(alice):
    made = make_generation(alice, "An  Old\tprompt", aspect_ratio="4:3", resolution="2K")
    Generation.objects.update(fingerprint="")
    migration = importlib.import_module("gallery.migrations.0013_post_guard")
    migration.fingerprint_existing(apps, None)
    made.refresh_from_db()
    assert made.fingerprint == request_fingerprint("an old prompt", "4:3", "2K", "png")


# Two web processes at once

RACE = """
import json, threading
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import setup_test_environment
from gallery.models import Generation, Post

setup_test_environment()
rita = User.objects.create_user("rita", password="x")
start = threading.Barrier(%(senders)d)
answers = []

def send():
    client = Client()
    client.force_login(rita)
    data = {"prompt": "a race", "aspect_ratio": "auto", "resolution": "1K",
            "output_format": "png", "count": "3", "key": "%(key)s"}
    start.wait()
    try:
        answers.append(client.post("/generations/new/", data).status_code)
    finally:
        connection.close()

threads = [threading.Thread(target=send) for _ in range(%(senders)d)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({
    "answers": answers,
    "made": Generation.objects.count(),
    "posts": Post.objects.count(),
}))
"""


def test_it_makes_one_post_of_the_same_form_sent_8_times_at_once_on_postgresql(tmp_path):
    require(*postgres_reachable(PG_URL))
    with fresh_postgres_database(PG_URL, "banana_guard") as url:
        env = {
            **process_env(),
            "DATABASE_URL": url,
            "REDIS_URL": "",
            "MEDIA_ROOT": str(tmp_path / "media"),
            "RATELIMIT_GENERATE": "",
            "RATELIMIT_GENERATE_ADDRESS": "",
        }
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True)
        code = RACE % {"senders": 8, "key": uuid.uuid4()}
        done = subprocess.run(
            [*manage, "shell", "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"answers": [302] * 8, "made": 3, "posts": 1}
