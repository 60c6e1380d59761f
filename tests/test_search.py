"""Prompt search through the prompt index: what it finds, on SQLite (FTS5, trigrams) and on
PostgreSQL (pg_trgm), the same way; paging through it; the capped "N of M shown"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from gallery import models, views
from gallery.models import Generation
from gallery.views import PAGE_SIZE
from tests.support import fresh_postgres_database, postgres_reachable, process_env, require

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.getenv("SEARCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")

PROMPTS = [
    "A red Bicycle by the sea",
    "a red and blue bicycle",
    "bicycles in Amsterdam, oil painting",
    "a 3D render of a teapot",
    'they say "cheese" and smile',
    "learn c++ in a weekend, poster",
    "100% orange juice",
    "a snake_case sign",
]

# (what is typed, the prompts it finds): a word or phrase or part of a word, in any case;
# FTS5's query syntax and LIKE's wildcards are plain characters.
SEARCHES = [
    ("bicycle", {PROMPTS[0], PROMPTS[1], PROMPTS[2]}),
    ("BICYCLE", {PROMPTS[0], PROMPTS[1], PROMPTS[2]}),
    ("icycl", {PROMPTS[0], PROMPTS[1], PROMPTS[2]}),
    ("red bicycle", {PROMPTS[0]}),
    ("bicycle by the sea", {PROMPTS[0]}),
    ("red AND blue", {PROMPTS[1]}),
    ("amsterdam, oil", {PROMPTS[2]}),
    ("3d", {PROMPTS[3]}),  # shorter than a trigram: compared prompt by prompt
    ("a", set(PROMPTS)),
    ('say "cheese"', {PROMPTS[4]}),
    ('"', {PROMPTS[4]}),
    ("c++", {PROMPTS[5]}),
    ("100%", {PROMPTS[6]}),
    ("0% o", {PROMPTS[6]}),
    ("e_c", {PROMPTS[7]}),
    ("*", set()),
    ("bicycle*", set()),
    ("NEAR(red blue)", set()),
    ("tricycle", set()),
]


def found(owner, text: str, rows: int | None = None) -> set[str]:
    mine = Generation.objects.owned_by(owner)
    return set(mine.search(text, rows).values_list("prompt", flat=True))


@pytest.fixture
def prompts(alice, bob):
    for prompt in PROMPTS:
        Generation.objects.create(owner=alice, prompt=prompt)
    Generation.objects.create(owner=bob, prompt="bob's red bicycle")


@pytest.mark.parametrize(("text", "expected"), SEARCHES)
@pytest.mark.parametrize("rows", [None, 1], ids=["index", "small-gallery"])
def test_it_finds_a_word_or_phrase_in_any_case(alice, prompts, text, expected, rows):
    assert found(alice, text, rows) == expected


UNICODE = ["Ein Fuchs im Schnee, ÉTÉ indien", "猫が屋根の上で寝ている"]


def test_it_finds_letters_of_any_alphabet_in_any_case(alice):
    for prompt in UNICODE:
        Generation.objects.create(owner=alice, prompt=prompt)
    assert found(alice, "été") == {"Ein Fuchs im Schnee, ÉTÉ indien"}
    assert found(alice, "屋根の") == {"猫が屋根の上で寝ている"}
    assert found(alice, "猫") == {"猫が屋根の上で寝ている"}


def test_it_follows_prompts_that_change_and_go(alice):
    generation = Generation.objects.create(owner=alice, prompt="a lighthouse at night")
    Generation.objects.filter(pk=generation.pk).update(prompt="a windmill at dawn")
    assert found(alice, "lighthouse") == set()
    assert found(alice, "windmill") == {"a windmill at dawn"}
    Generation.objects.filter(pk=generation.pk).delete()
    assert found(alice, "windmill") == set()


@pytest.mark.parametrize("scan_rows", [0, 10_000], ids=["index", "small-gallery"])
def test_it_searches_through_the_view_and_pages_newest_first(
    client, alice, bob, monkeypatch, scan_rows
):
    monkeypatch.setattr(models, "SEARCH_SCAN_ROWS", scan_rows)
    Generation.objects.bulk_create(
        [Generation(owner=alice, prompt=f"koi {i} in a pond") for i in range(PAGE_SIZE * 2 + 3)]
        + [Generation(owner=bob, prompt="bob's koi")]
        + [Generation(owner=alice, prompt=f"tree {i}") for i in range(5)]
    )
    client.force_login(alice)
    seen: list[int] = []
    url = "/?q=KOI"
    while url:
        response = client.get(url)
        seen += [g.pk for g in response.context["generations"]]
        url = response.context["next_url"] and "/" + response.context["next_url"]
    koi = Generation.objects.filter(owner=alice, prompt__startswith="koi")
    assert seen == sorted(koi.values_list("pk", flat=True), reverse=True)


def test_it_counts_what_a_search_finds_up_to_a_limit(client, alice, monkeypatch):
    monkeypatch.setattr(views, "MAX_COUNTED", 5)
    Generation.objects.bulk_create(
        [Generation(owner=alice, prompt=f"owl {i}") for i in range(7)]
        + [Generation(owner=alice, prompt=f"bat {i}", status="done") for i in range(3)]
    )
    client.force_login(alice)
    html = client.get("/", {"q": "owl"}).content.decode()
    assert "<strong>5+</strong> of 10 shown" in html
    assert html.count('<article id="card-') == 7  # all of them shown all the same
    html = client.get("/", {"q": "bat"}).content.decode()
    assert "<strong>3</strong> of 10 shown" in html
    # A status alone is its counter, exact however many.
    html = client.get("/", {"status": "pending"}).content.decode()
    assert "<strong>7</strong> of 10 shown" in html
    html = client.get("/", {"q": "owl", "status": "done"}).content.decode()
    assert "<strong>0</strong> of 10 shown" in html


def test_it_keeps_a_search_that_is_too_long_out_of_the_index(client, alice, prompts):
    client.force_login(alice)
    response = client.get(reverse("gallery:index"), {"q": "bicycle " * 40})
    assert response.status_code == 200  # ignored, as any bad filter value is
    assert response.context["shown"] is None


# The same searches on PostgreSQL, in a process of its own on a fresh database.

SEARCH_ON_POSTGRESQL = """
import json
from django.contrib.auth.models import User
from gallery.models import GalleryCounts, Generation
alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
for prompt in %(prompts)s:
    Generation.objects.create(owner=alice, prompt=prompt)
Generation.objects.create(owner=bob, prompt="bob's red bicycle")
found = {
    text: sorted(Generation.objects.owned_by(alice).search(text).values_list("prompt", flat=True))
    for text, _ in %(searches)s
}
for prompt in %(unicode)s:
    Generation.objects.create(owner=bob, prompt=prompt)
found["été"] = list(Generation.objects.owned_by(bob).search("été").values_list("prompt", flat=True))
first = Generation.objects.owned_by(alice).order_by("id").first()
first.is_favorite = True
first.save(update_fields=["is_favorite"])
Generation.objects.filter(pk=first.pk).update(status="done")
Generation.objects.owned_by(alice).filter(prompt__startswith="learn").delete()
Generation.objects.owned_by(alice).filter(prompt__startswith="100").update(status="failed")
print(json.dumps({"found": found, "counts": GalleryCounts.of(alice)}))
"""


def test_it_searches_and_counts_the_same_on_postgresql(tmp_path):
    require(*postgres_reachable(PG_URL))
    with fresh_postgres_database(PG_URL, "banana_search") as url:
        env = {
            **process_env(),
            "DATABASE_URL": url,
            "REDIS_URL": "",
            "MEDIA_ROOT": str(tmp_path / "media"),
        }
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True)
        code = SEARCH_ON_POSTGRESQL % {
            "prompts": repr(PROMPTS),
            "searches": repr([(text, None) for text, _ in SEARCHES]),
            "unicode": repr(UNICODE),
        }
        done = subprocess.run(
            [*manage, "shell", "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["found"] == {
        **{text: sorted(expected) for text, expected in SEARCHES},
        "été": [UNICODE[0]],
    }
    assert result["counts"] == {
        "total": len(PROMPTS) - 1,
        "pending": len(PROMPTS) - 3,
        "done": 1,
        "failed": 1,
        "favorites": 1,
    }
