"""The gallery's counters (kept by the database, gallery.triggers), `recount_gallery`, and the
pages that must cost the same number of queries in a gallery of any size."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gallery.apps import reinstall_triggers
from gallery.models import GalleryCounts, Generation
from tests.factories import done_generation, make_generation


def counted(user) -> dict[str, int]:
    """The counters as a fresh count of the user's rows would make them."""
    fresh = Generation.objects.filter(owner=user).counts_by_owner().first()
    fresh = {k: fresh[k] for k in ("total", "done", "failed", "favorites")} if fresh else {}
    fresh = {"total": 0, "done": 0, "failed": 0, "favorites": 0, **fresh}
    return {**fresh, "pending": fresh["total"] - fresh["done"] - fresh["failed"]}


POST = {
    "prompt": "a lighthouse",
    "aspect_ratio": "auto",
    "resolution": "1K",
    "output_format": "png",
    "count": "3",
}


def test_it_keeps_the_counters_through_a_generations_life(client, alice, bob):
    client.force_login(alice)
    response = client.post(reverse("gallery:create"), POST)
    assert response.status_code == 302
    assert GalleryCounts.of(alice) == {
        "total": 3,
        "pending": 3,
        "done": 0,
        "failed": 0,
        "favorites": 0,
    }
    first, second, third = Generation.objects.filter(owner=alice).order_by("id")
    # Between unfinished states nothing is counted: the claim, the provider's states.
    Generation.objects.filter(pk=first.pk).update(status="downloading")
    assert GalleryCounts.of(alice)["pending"] == 3
    first.refresh_from_db()
    assert first.mark_done()
    assert second.mark_failed("The image service could not make this image.")
    assert GalleryCounts.of(alice) == counted(alice)
    assert GalleryCounts.of(alice) | {"total": 0} == {
        "total": 0,
        "pending": 1,
        "done": 1,
        "failed": 1,
        "favorites": 0,
    }

    second.refresh_from_db()
    assert second.retry()
    assert GalleryCounts.of(alice) == counted(alice)
    assert (GalleryCounts.of(alice)["failed"], GalleryCounts.of(alice)["pending"]) == (0, 2)

    client.post(reverse("gallery:favorite", args=[first.pk]), {"favorite": "1"})
    assert GalleryCounts.of(alice)["favorites"] == 1
    client.post(reverse("gallery:favorite", args=[first.pk]), {"favorite": "1"})
    assert GalleryCounts.of(alice)["favorites"] == 1  # favourited twice counts once
    client.post(reverse("gallery:favorite", args=[first.pk]), {"favorite": "0"})
    assert GalleryCounts.of(alice)["favorites"] == 0

    client.post(reverse("gallery:delete", args=[third.pk]))
    assert (
        GalleryCounts.of(alice)
        == counted(alice)
        == {
            "total": 2,
            "pending": 1,
            "done": 1,
            "failed": 0,
            "favorites": 0,
        }
    )
    # Nobody else's counters moved.
    assert (
        GalleryCounts.of(bob)
        == counted(bob)
        == {
            "total": 0,
            "pending": 0,
            "done": 0,
            "failed": 0,
            "favorites": 0,
        }
    )


def test_it_keeps_the_counters_through_bulk_actions(client, alice, bob):
    mine = [make_generation(alice, f"p{i}", status=("done", "failed")[i % 2]) for i in range(6)]
    make_generation(bob, "bob's", is_favorite=True)
    client.force_login(alice)
    ids = [g.pk for g in mine[:4]]
    client.post(reverse("gallery:bulk"), {"action": "favorite", "ids": ids})
    assert GalleryCounts.of(alice)["favorites"] == 4
    client.post(reverse("gallery:bulk"), {"action": "unfavorite", "ids": ids[:1]})
    assert GalleryCounts.of(alice)["favorites"] == 3
    client.post(reverse("gallery:bulk"), {"action": "delete", "ids": ids, "confirm": "1"})
    assert (
        GalleryCounts.of(alice)
        == counted(alice)
        == {
            "total": 2,
            "pending": 0,
            "done": 1,
            "failed": 1,
            "favorites": 0,
        }
    )
    assert GalleryCounts.of(bob) == counted(bob)
    assert GalleryCounts.of(bob)["favorites"] == 1


def test_it_shows_the_stored_counters_on_the_page_and_in_the_card_refresh(client, alice):
    pending = make_generation(alice, "soon", status="generating")
    done_generation(alice, "ready")
    client.force_login(alice)
    assert client.get("/").context["counts"] == counted(alice)
    Generation.objects.filter(pk=pending.pk).update(status="failed")
    response = client.get(
        reverse("gallery:updates"), {"ids": str(pending.pk)}, headers={"HX-Request": "true"}
    )
    html = response.content.decode()
    assert 'id="counts"' in html
    assert "<strong>1</strong> done" in html and "<strong>1</strong> failed" in html


def test_it_drops_the_counters_with_the_account(alice):
    make_generation(alice, "gone soon")
    alice.delete()
    assert not GalleryCounts.objects.exists()


def test_it_repairs_the_counters_and_is_safe_to_run_twice(alice, bob, charlie, capsys):
    make_generation(alice, "a rose", status="done", is_favorite=True)
    make_generation(alice, "a tulip", status="failed")
    make_generation(bob, "a daisy")
    right = {user.pk: counted(user) for user in (alice, bob, charlie)}
    # As after a restore of the generations alone: counters off, or missing.
    GalleryCounts.objects.filter(owner=alice).update(total=40, favorites=0)
    GalleryCounts.objects.filter(owner=bob).delete()
    GalleryCounts.objects.create(owner=charlie, total=3, done=3)

    call_command("recount_gallery")
    assert capsys.readouterr().out.strip() == "Counted 3 galleries: 3 had counters that were off."
    assert {user.pk: GalleryCounts.of(user) for user in (alice, bob, charlie)} == right

    call_command("recount_gallery", "--prompt-index")
    out = capsys.readouterr().out
    assert "Counted 3 galleries: 0 had counters that were off." in out
    assert {user.pk: GalleryCounts.of(user) for user in (alice, bob, charlie)} == right
    if connection.vendor == "sqlite":
        assert "Indexed every prompt again." in out
        assert list(Generation.objects.search("TULIP").values_list("prompt", flat=True)) == [
            "a tulip"
        ]


def add_generations(owner, count: int) -> None:
    """`count` generations as a gallery holds them: mostly done or failed, some favourites."""
    Generation.objects.bulk_create(
        [
            Generation(
                owner=owner,
                prompt=f"n{i} a harbour at dawn, watercolour",
                status=("done", "failed", "done")[i % 3],
                is_favorite=i % 5 == 0,
            )
            for i in range(count)
        ]
    )


def queries(client, path: str, htmx: bool = False) -> int:
    headers = {"HX-Request": "true"} if htmx else {}
    with CaptureQueriesContext(connection) as captured:
        assert client.get(path, headers=headers).status_code == 200
    return len(captured)


@pytest.mark.parametrize(
    ("path", "htmx"),
    [
        ("/", False),
        ("/?q=harbour", False),
        ("/?q=n1", False),
        ("/?status=done&favorites=on", False),
        ("/?status=pending", False),
        ("/?favorites=on", False),
        ("updates", True),
    ],
)
def test_it_costs_the_same_queries_at_10_and_at_300_generations(client, alice, path, htmx):
    add_generations(alice, 10)
    # The poller's refresh: the pending cards, and one that finished since (so the counters
    # come too).
    pending = [make_generation(alice, "soon", status="generating") for _ in range(3)]
    finished = make_generation(alice, "ready", status="done")
    if path == "updates":
        ids = ",".join(str(g.pk) for g in [*pending, finished])
        path = f"{reverse('gallery:updates')}?ids={ids}"
    client.force_login(alice)
    queries(client, path, htmx)  # the first request of a session reads a few rows more
    small = queries(client, path, htmx)
    add_generations(alice, 290)
    assert queries(client, path, htmx) == small


def test_it_puts_back_the_triggers_that_an_altered_table_lost_on_sqlite(alice):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite rebuilds a table to alter it; PostgreSQL keeps its triggers")
    with connection.cursor() as cursor:
        # As Django's SQLite schema editor leaves the table after altering it.
        cursor.execute("DROP TRIGGER gallery_counts_insert")
        cursor.execute("DROP TRIGGER gallery_prompt_index_insert")
    reinstall_triggers(using="default")
    make_generation(alice, "a paper crane")
    assert GalleryCounts.of(alice)["total"] == 1
    assert found_prompts("paper cr") == ["a paper crane"]


def found_prompts(text: str) -> list[str]:
    return list(Generation.objects.search(text).values_list("prompt", flat=True))
