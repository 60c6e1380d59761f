"""Managing the gallery: detail, remix, re-run, delete, favourites, search, filters, bulk."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from gallery.models import Generation, Image, ShareLink
from gallery.views import PAGE_SIZE
from tests.factories import done_generation


@pytest.fixture
def done(alice) -> Generation:
    return done_generation(alice, "a koi pond in autumn", aspect_ratio="4:3", output_format="jpg")


def test_it_shows_every_detail_of_a_generation(client, alice, done):
    client.force_login(alice)
    response = client.get(reverse("gallery:detail", args=[done.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    image = done.images.get()
    assert "a koi pond in autumn" in html
    assert "4:3" in html and "1K" in html and "JPG" in html
    assert f"{image.width} × {image.height} px" in html
    # The factory's generation waited 4 s and rendered for 6 s, 10 s in all.
    assert "<dt>Waiting</dt><dd>4.0 s</dd>" in html
    assert "<dt>Rendering</dt><dd>6.0 s</dd>" in html
    assert "<dt>Total</dt><dd>10.0 s</dd>" in html
    assert reverse("gallery:image", args=[image.pk]) + "?download=1" in html
    assert f"?remix={done.pk}" in html
    assert reverse("gallery:rerun", args=[done.pk]) in html
    assert reverse("gallery:delete", args=[done.pk]) in html
    assert reverse("gallery:favorite", args=[done.pk]) in html
    assert 'data-copy="#prompt-text"' in html


def test_it_refreshes_the_detail_page_only_while_pending(client, alice, done):
    pending = Generation.objects.create(owner=alice, prompt="still cooking")
    client.force_login(alice)
    html = client.get(reverse("gallery:detail", args=[pending.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in html and "Queued" in html
    html = client.get(reverse("gallery:detail", args=[done.pk])).content.decode()
    assert "every 2s" not in html


def test_it_has_consistent_timings(alice):
    created = timezone.now() - timedelta(minutes=1)
    generation = done_generation(
        alice,
        "timed",
        created_at=created,
        finished_at=created + timedelta(seconds=12.5),
        cost_time_ms=4200,
        images=0,
    )
    generation.refresh_from_db()
    assert generation.timings == {
        "waiting": pytest.approx(8.3),
        "rendering": pytest.approx(4.2),
        "total": pytest.approx(12.5),
    }
    pending = make(alice, "not yet", status="generating")
    assert pending.timings == {"waiting": None, "rendering": None, "total": None}


def test_it_prefills_the_form_for_a_remix(client, alice, done):
    client.force_login(alice)
    html = client.get("/", {"remix": done.pk}).content.decode()
    assert "a koi pond in autumn</textarea>" in html
    assert '<option value="4:3" selected>' in html
    assert '<option value="jpg" selected>' in html


def test_it_reruns_with_the_same_settings(client, alice, done):
    client.force_login(alice)
    response = client.post(reverse("gallery:rerun", args=[done.pk]))
    assert response.status_code == 302
    copy = Generation.objects.exclude(pk=done.pk).get()
    assert (copy.prompt, copy.aspect_ratio, copy.resolution, copy.output_format) == (
        done.prompt,
        done.aspect_ratio,
        done.resolution,
        done.output_format,
    )
    assert copy.status == Generation.Status.QUEUED
    assert copy.request_id != done.request_id


def test_it_asks_before_deleting_and_removes_the_files(
    client, alice, done, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    image = done.images.get()
    ShareLink.objects.create(image=image)
    names = [image.file.name, image.thumbnail.name, image.thumbnail_large.name]
    assert all(default_storage.exists(name) for name in names)

    page = client.get(reverse("gallery:delete", args=[done.pk]))
    assert page.status_code == 200 and "cannot be undone" in page.content.decode()
    assert Generation.objects.filter(pk=done.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("gallery:delete", args=[done.pk]))
    assert response.status_code == 302
    assert not Generation.objects.filter(pk=done.pk).exists()
    assert not Image.objects.exists() and not ShareLink.objects.exists()
    assert not any(default_storage.exists(name) for name in names)


def test_it_toggles_a_favourite(client, alice, done):
    client.force_login(alice)
    url = reverse("gallery:favorite", args=[done.pk])
    response = client.post(url, {"favorite": "1"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert 'aria-pressed="true"' in response.content.decode()
    done.refresh_from_db()
    assert done.is_favorite
    assert client.post(url, {"favorite": "0"}).status_code == 302
    done.refresh_from_db()
    assert not done.is_favorite


def make(alice, prompt: str, **fields) -> Generation:
    return Generation.objects.create(owner=alice, prompt=prompt, **fields)


def cards(html: str) -> int:
    return html.count('<article id="card-')


def test_it_searches_prompts(client, alice, bob):
    make(alice, "A red Bicycle by the sea")
    make(alice, "a green tree")
    make(bob, "another bicycle")
    client.force_login(alice)
    html = client.get("/", {"q": "bicycle"}).content.decode()
    assert cards(html) == 1 and "A red Bicycle" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "failed"}, {"failed one"}),
        ({"status": "done"}, {"done one", "favourite one", "wide one", "big one"}),
        ({"status": "pending"}, {"queued one"}),
        ({"favorites": "on"}, {"favourite one"}),
        ({"aspect_ratio": "16:9"}, {"wide one"}),
        ({"resolution": "4K"}, {"big one"}),
        (
            {"status": "nonsense"},
            {"failed one", "done one", "queued one", "favourite one", "wide one", "big one"},
        ),
    ],
)
def test_it_filters_the_gallery(client, alice, query, expected):
    make(alice, "failed one", status="failed")
    make(alice, "done one", status="done")
    make(alice, "queued one")
    make(alice, "favourite one", is_favorite=True, status="done")
    make(alice, "wide one", aspect_ratio="16:9", status="done")
    make(alice, "big one", resolution="4K", status="done")
    client.force_login(alice)
    html = client.get("/", query).content.decode()
    shown = {g.prompt for g in Generation.objects.all() if f'id="card-{g.pk}"' in html}
    assert shown == expected


def test_it_counts_the_gallery(client, alice):
    make(alice, "a", status="failed")
    make(alice, "b", status="done", is_favorite=True)
    make(alice, "c")
    client.force_login(alice)
    response = client.get("/")
    assert response.context["counts"] == {
        "total": 3,
        "pending": 1,
        "done": 1,
        "failed": 1,
        "favorites": 1,
    }


def test_it_pages_through_the_whole_gallery_with_keysets(client, alice):
    Generation.objects.bulk_create(
        [Generation(owner=alice, prompt=f"n{i}", status="failed") for i in range(PAGE_SIZE * 2 + 5)]
    )
    client.force_login(alice)
    seen: list[int] = []
    url = "/?status=failed"
    while url:
        response = client.get(url)
        seen += [g.pk for g in response.context["generations"]]
        url = response.context["next_url"] and "/" + response.context["next_url"]
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == PAGE_SIZE * 2 + 5


def test_it_scrolls_with_htmx_and_keeps_the_filters(client, alice):
    Generation.objects.bulk_create(
        [Generation(owner=alice, prompt=f"cat {i}", status="failed") for i in range(PAGE_SIZE + 3)]
    )
    client.force_login(alice)
    html = client.get("/", {"q": "cat"}).content.decode()
    assert 'hx-trigger="revealed"' in html and "q=cat&amp;before=" in html
    last = Generation.objects.order_by("-id")[PAGE_SIZE - 1]
    response = client.get("/", {"q": "cat", "before": last.pk}, headers={"HX-Request": "true"})
    fragment = response.content.decode()
    assert "<html" not in fragment
    assert cards(fragment) == 3
    assert 'hx-trigger="revealed"' not in fragment


def test_it_lazy_loads_thumbnails_at_1x_and_2x(client, alice, done):
    client.force_login(alice)
    html = client.get("/").content.decode()
    image = done.images.get()
    small = reverse("gallery:thumbnail", args=[image.pk])
    large = reverse("gallery:thumbnail_large", args=[image.pk])
    assert re.fullmatch(rf"{small}\?v=\w+ 1x, {large}\?v=\w+ 2x", image.thumbnail_srcset)
    src, srcset = re.escape(image.thumbnail_url), re.escape(image.thumbnail_srcset)
    assert re.search(rf'<img src="{src}" srcset="{srcset}"[^>]* loading="lazy"', html)


def test_it_favourites_several_at_once(client, alice, bob):
    mine = [make(alice, f"m{i}") for i in range(3)]
    theirs = make(bob, "theirs")
    client.force_login(alice)
    response = client.post(
        reverse("gallery:bulk"),
        {"action": "favorite", "ids": [mine[0].pk, mine[1].pk, theirs.pk]},
    )
    assert response.status_code == 302
    assert sorted(Generation.objects.favorites().values_list("pk", flat=True)) == sorted(
        [mine[0].pk, mine[1].pk]
    )


def test_it_deletes_several_after_confirmation(client, alice, bob, done):
    other = make(alice, "other")
    theirs = make(bob, "theirs")
    client.force_login(alice)
    ids = [done.pk, other.pk, theirs.pk]
    page = client.post(reverse("gallery:bulk"), {"action": "delete", "ids": ids})
    assert page.status_code == 200 and "Delete 2 images?" in page.content.decode()
    assert Generation.objects.count() == 3

    client.post(reverse("gallery:bulk"), {"action": "delete", "ids": ids, "confirm": "1"})
    assert list(Generation.objects.values_list("pk", flat=True)) == [theirs.pk]
    assert not Image.objects.exists()


@pytest.mark.parametrize(
    ("action", "one", "two"),
    [
        ("favorite", "Added 1 image to your favourites.", "Added 2 images to your favourites."),
        (
            "unfavorite",
            "Removed 1 image from your favourites.",
            "Removed 2 images from your favourites.",
        ),
        ("delete", "Deleted 1 image.", "Deleted 2 images."),
    ],
)
def test_it_says_how_many_in_words(client, alice, action, one, two):
    client.force_login(alice)
    for count, words in [(1, one), (2, two)]:
        ids = [make(alice, f"p{i}", is_favorite=action == "unfavorite").pk for i in range(count)]
        data = {"action": action, "ids": ids, "confirm": "1"}
        html = client.post(reverse("gallery:bulk"), data, follow=True).content.decode()
        assert words in html
        assert "image(s)" not in html


def test_it_counts_favourites_in_words(client, alice):
    client.force_login(alice)
    make(alice, "one", is_favorite=True)
    assert re.search(r"<strong>1</strong> favourite<", client.get("/").content.decode())
    make(alice, "two", is_favorite=True)
    assert re.search(r"<strong>2</strong> favourites<", client.get("/").content.decode())


def test_it_explains_an_empty_bulk_selection(client, alice):
    client.force_login(alice)
    response = client.post(reverse("gallery:bulk"), {"action": "delete"}, follow=True)
    assert "Select at least one image first." in response.content.decode()


def test_it_checks_ownership(client, alice, bob, done):
    image = done.images.get()
    client.force_login(bob)
    for url in [
        reverse("gallery:detail", args=[done.pk]),
        reverse("gallery:delete", args=[done.pk]),
        f"/?remix={done.pk}",
    ]:
        assert client.get(url).status_code == 404, url
    for url in [
        reverse("gallery:delete", args=[done.pk]),
        reverse("gallery:rerun", args=[done.pk]),
        reverse("gallery:favorite", args=[done.pk]),
        reverse("gallery:share_create", args=[image.pk]),
    ]:
        assert client.post(url, {"favorite": "1"}).status_code == 404, url
    done.refresh_from_db()
    assert not done.is_favorite
    assert Generation.objects.count() == 1
    assert not ShareLink.objects.exists()


def test_it_lets_anonymous_users_reach_only_auth_and_share_pages(client, alice, done):
    image = done.images.get()
    link = ShareLink.objects.create(image=image)
    protected = [
        ("get", "/"),
        ("get", reverse("gallery:detail", args=[done.pk])),
        ("get", reverse("gallery:delete", args=[done.pk])),
        ("get", reverse("gallery:shares")),
        ("get", reverse("gallery:updates")),
        ("get", reverse("gallery:image", args=[image.pk])),
        ("get", reverse("gallery:thumbnail", args=[image.pk])),
        ("get", reverse("gallery:thumbnail_large", args=[image.pk])),
        ("get", reverse("account_change_password")),
        ("get", reverse("accounts:account")),
        ("post", reverse("gallery:create")),
        ("post", reverse("gallery:bulk")),
        ("post", reverse("gallery:rerun", args=[done.pk])),
        ("post", reverse("gallery:retry", args=[done.pk])),
        ("post", reverse("gallery:favorite", args=[done.pk])),
        ("post", reverse("gallery:delete", args=[done.pk])),
        ("post", reverse("gallery:share_create", args=[image.pk])),
        ("post", reverse("gallery:share_revoke", args=[link.pk])),
    ]
    for method, url in protected:
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("account_login")), url
    public = [
        reverse(name) for name in ["account_login", "account_signup", "account_reset_password"]
    ]
    for url in [*public, f"/s/{link.token}/", f"/s/{link.token}/image"]:
        assert client.get(url).status_code == 200, url
    assert Generation.objects.count() == 1 and ShareLink.objects.get().is_active
