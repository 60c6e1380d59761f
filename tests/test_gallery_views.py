"""The gallery's views: login required, the form, the live cards, image files, ownership."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_ratelimit.core import get_usage

from gallery.models import Generation, Image
from gallery.views import PAGE_SIZE, wait_words
from tests.factories import done_generation, make_generation

VALID = {"prompt": "a lighthouse at dawn", "aspect_ratio": "3:2", "resolution": "2K"}


def form_data(**changes) -> dict:
    return {**VALID, "output_format": "jpg", "count": "1", **changes}


@pytest.fixture
def done_image(alice) -> Image:
    return done_generation(alice, "A Lighthouse, at Dawn!").images.get()


# Accounts


def test_it_sends_anonymous_users_to_login(client, db):
    for url in [
        "/",
        "/generations/updates/",
        "/images/1/",
        "/images/1/thumbnail/",
        "/images/1/thumbnail/large/",
    ]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))


# The form


def test_it_limits_generations_and_keeps_the_prompt(client, alice, settings):
    settings.RATELIMIT_GENERATE = "2/m"
    client.force_login(alice)
    for _ in range(2):
        assert client.post(reverse("gallery:create"), form_data()).status_code == 302
    response = client.post(reverse("gallery:create"), form_data(prompt="one more lighthouse"))
    assert response.status_code == 400
    html = response.content.decode()
    match = re.search(r"You can generate again in about (\d+) seconds?; your prompt is", html)
    assert match and "one more lighthouse" in html
    assert "2/m" not in html
    # The count starts again when django-ratelimit's window for this user ends.
    request = RequestFactory().post("/")
    request.user = alice
    usage = get_usage(request, group="generate", key="user", rate="2/m", method="POST")
    assert int(match.group(1)) == pytest.approx(max(1, usage["time_left"]), abs=1)
    assert Generation.objects.count() == 2


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "about 1 second"),
        (1, "about 1 second"),
        (40, "about 40 seconds"),
        (61, "about 1 minute"),
        (150, "about 2 minutes"),
        (3599, "about 1 hour"),
        (7200, "about 2 hours"),
    ],
)
def test_it_says_how_long_to_wait_in_words(seconds, words):
    assert wait_words(seconds) == words


def test_it_creates_a_generation_and_redirects(client, alice):
    client.force_login(alice)
    response = client.post(reverse("gallery:create"), form_data())
    assert response.status_code == 302
    generation = Generation.objects.get()
    assert generation.owner == alice
    assert (generation.prompt, generation.aspect_ratio, generation.resolution) == (
        "a lighthouse at dawn",
        "3:2",
        "2K",
    )
    assert generation.output_format == "jpg"
    assert generation.status == Generation.Status.QUEUED


def test_it_answers_htmx_with_the_new_card_a_fresh_form_and_the_poller(client, alice):
    client.force_login(alice)
    response = client.post(reverse("gallery:create"), form_data(), headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    generation = Generation.objects.get()
    assert f'id="card-{generation.pk}"' in html
    assert 'id="generate-form"' in html and 'hx-swap-oob="true"' in html
    assert f"?ids={generation.pk}" in html and 'hx-trigger="every 2s"' in html


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": ""}, "Write a prompt"),
        ({"prompt": "   "}, "Write a prompt"),
        (
            {"prompt": "x" * 20_001},
            "20001 characters long; the most the image service takes is 20000",
        ),
        ({"aspect_ratio": "7:3"}, "not a valid aspect ratio"),
        ({"resolution": "8K"}, "not a valid resolution"),
        ({"output_format": "gif"}, "not a valid file format"),
        ({"count": "5"}, "Ask for 1 to 4 images"),
    ],
)
def test_it_explains_bad_input_and_keeps_it(client, alice, changes, message):
    client.force_login(alice)
    data = form_data(**changes)
    response = client.post(reverse("gallery:create"), data)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    if data["prompt"].strip() and len(data["prompt"]) < 100:
        assert data["prompt"] in html  # nothing the user wrote is lost
    assert not Generation.objects.exists()


def test_it_answers_htmx_bad_input_by_retargeting_the_form(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("gallery:create"), form_data(prompt=""), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#generate-form"
    assert response["HX-Reswap"] == "outerHTML"
    assert "Write a prompt" in response.content.decode()


def test_it_makes_several_variations_in_one_post(client, alice):
    client.force_login(alice)
    client.post(reverse("gallery:create"), form_data(count="3"))
    generations = Generation.objects.all()
    assert generations.count() == 3
    assert len({g.request_id for g in generations}) == 3
    assert {g.prompt for g in generations} == {"a lighthouse at dawn"}
    # One post: the gallery groups its variations, and the next post is a group of its own.
    assert len({g.post for g in generations}) == 1 and generations[0].post is not None
    client.post(reverse("gallery:create"), form_data(count="2"))
    assert Generation.objects.values("post").distinct().count() == 2
    html = client.get(reverse("gallery:index")).content.decode()
    assert html.count(f'data-post="{generations[0].post}"') == 3


def test_it_lists_a_posts_variations_on_the_detail_page(client, alice, bob):
    client.force_login(alice)
    client.post(reverse("gallery:create"), form_data(count="3"))
    first, second, third = Generation.objects.order_by("id")
    done_generation(bob, post=first.post)  # another user's row can't join (nor be shown)
    rerun = client.post(reverse("gallery:rerun", args=[second.pk]))
    assert rerun.status_code == 302
    assert Generation.objects.order_by("id").last().post is None  # made on its own

    html = client.get(reverse("gallery:detail", args=[second.pk])).content.decode()
    assert "3 images from one prompt" in html
    for other in (first, second, third):
        assert reverse("gallery:detail", args=[other.pk]) in html
    assert f'href="{reverse("gallery:detail", args=[second.pk])}" aria-current="page"' in html
    alone = Generation.objects.order_by("id").last()
    assert (
        "Variations" not in client.get(reverse("gallery:detail", args=[alone.pk])).content.decode()
    )


# Cards


def test_it_lists_only_the_users_own_generations_newest_first(client, alice, bob):
    Generation.objects.create(owner=alice, prompt="alice old")
    Generation.objects.create(owner=bob, prompt="bob's secret")
    Generation.objects.create(owner=alice, prompt="alice new")
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert "bob&#x27;s secret" not in html and "bob's secret" not in html
    assert html.index("alice new") < html.index("alice old")


def test_it_polls_once_for_all_pending_cards(client, alice):
    first = Generation.objects.create(owner=alice, prompt="one")
    second = Generation.objects.create(owner=alice, prompt="two")
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert html.count('hx-trigger="every 2s"') == 1
    assert f"?ids={second.pk},{first.pk}" in html


def test_it_stops_polling_when_nothing_is_pending(client, done_image, alice):
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert "every 2s" not in html
    assert reverse("gallery:thumbnail", args=[done_image.pk]) in html


def test_it_refreshes_pending_cards_out_of_band(client, alice, done_image):
    pending = Generation.objects.create(owner=alice, prompt="still going")
    done = done_image.generation
    client.force_login(alice)
    response = client.get(reverse("gallery:updates"), {"ids": f"{pending.pk},{done.pk}"})
    html = response.content.decode()
    assert f'id="card-{done.pk}"' in html and f'id="card-{pending.pk}"' in html
    # Two cards, the poller, the counters and the pause banner.
    assert html.count('hx-swap-oob="true"') == 5
    assert 'id="counts"' in html
    assert reverse("gallery:thumbnail", args=[done_image.pk]) in html
    assert "Queued" in html
    assert f"?ids={pending.pk}" in html  # only the pending one is watched further


def test_it_shows_a_failed_card_with_its_reason_and_a_retry_button(client, alice):
    generation = Generation.objects.create(
        owner=alice, prompt="nope", status="failed", fail_message="Content policy: no."
    )
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert "Content policy: no." in html
    assert reverse("gallery:retry", args=[generation.pk]) in html


def test_it_retries_a_failed_generation(client, alice):
    generation = Generation.objects.create(owner=alice, prompt="again", status="failed")
    client.force_login(alice)
    response = client.post(reverse("gallery:retry", args=[generation.pk]))
    assert response.status_code == 302
    generation.refresh_from_db()
    assert generation.status == Generation.Status.QUEUED


def test_it_counts_a_retried_cards_time_from_the_retry(client, alice):
    long_ago = timezone.now() - timedelta(minutes=10)
    generation = make_generation(
        alice,
        "again",
        status="failed",
        fail_message="The image service could not make this image.",
        created_at=long_ago,
        queued_at=long_ago,
        finished_at=long_ago + timedelta(minutes=1, seconds=43),
    )
    client.force_login(alice)
    retried = client.post(
        reverse("gallery:retry", args=[generation.pk]), headers={"HX-Request": "true"}
    )
    refreshed = client.get(reverse("gallery:updates"), {"ids": str(generation.pk)})
    for response in (retried, refreshed):
        clock = re.search(r'<p class="tile-elapsed">([^<]*)</p>', response.content.decode())
        assert clock and clock.group(1) in ("0 s", "1 s", "2 s")
    generation.refresh_from_db()
    assert generation.created_at == long_ago  # when it was first made, for the detail page
    assert generation.elapsed < timedelta(seconds=3)


def _add_generations(owner, count: int) -> None:
    """`count` generations, every third one done with an image row, as fast as bulk goes."""
    generations = Generation.objects.bulk_create(
        [
            Generation(
                owner=owner,
                prompt=f"p{i}",
                status="done" if i % 3 == 0 else "failed",
                is_favorite=i % 2 == 0,
            )
            for i in range(count)
        ]
    )
    Image.objects.bulk_create(
        [
            Image(
                generation=g,
                file=f"images/{g.pk}.png",
                thumbnail=f"thumbs/{g.pk}.webp",
                width=1024,
                height=1024,
                bytes=1,
                format="PNG",
                sha256="0" * 64,
            )
            for g in generations
            if g.status == "done"
        ]
    )


@pytest.mark.parametrize("query", [{}, {"q": "p1"}, {"status": "done", "favorites": "on"}])
def test_it_has_a_constant_number_of_queries_per_gallery_page(client, alice, query):
    client.force_login(alice)
    client.get("/")  # the first request of a session sets things up once
    _add_generations(alice, 10)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/", query).status_code == 200
    # Forty pages' worth: every filter then has a full page and a next one. More rows cannot
    # change the count of queries, only how long the bulk insert takes.
    _add_generations(alice, 1_000)
    with CaptureQueriesContext(connection) as many:
        response = client.get("/", query)
    assert response.status_code == 200
    assert len(response.context["generations"]) == PAGE_SIZE
    assert len(many) == len(few)
    # The next page costs the same again.
    next_url = response.context["next_url"]
    assert next_url
    with CaptureQueriesContext(connection) as page_two:
        page = client.get("/" + next_url, headers={"HX-Request": "true"})
    assert page.status_code == 200
    assert page.content.decode().count('<article id="card-') == PAGE_SIZE
    assert len(page_two) <= len(few)


# Image files


def test_it_serves_the_image_to_its_owner(client, alice, done_image):
    client.force_login(alice)
    response = client.get(reverse("gallery:image", args=[done_image.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "private" in response["Cache-Control"]
    assert b"".join(response.streaming_content) == done_image.file.open("rb").read()


def test_it_downloads_with_a_sensible_file_name(client, alice, done_image):
    client.force_login(alice)
    response = client.get(reverse("gallery:image", args=[done_image.pk]), {"download": "1"})
    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment")
    assert f'banana-a-lighthouse-at-dawn-{done_image.generation_id}-1.png"' in disposition


@pytest.mark.parametrize("field", ["thumbnail", "thumbnail_large"])
def test_it_serves_the_thumbnails_as_webp(client, alice, done_image, field):
    client.force_login(alice)
    response = client.get(reverse(f"gallery:{field}", args=[done_image.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/webp"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "private" in response["Cache-Control"] and "max-age=86400" in response["Cache-Control"]
    assert b"".join(response.streaming_content) == getattr(done_image, field).open("rb").read()


def test_it_answers_404_for_a_large_thumbnail_not_made_yet(client, alice, done_image):
    Image.objects.filter(pk=done_image.pk).update(thumbnail_large="")
    done_image.refresh_from_db()
    client.force_login(alice)
    response = client.get(reverse("gallery:thumbnail_large", args=[done_image.pk]))
    assert response.status_code == 404
    # Until `rebuild_thumbnails` makes it, the gallery offers the small one alone.
    assert done_image.thumbnail_srcset == f"{done_image.thumbnail_url} 1x"


def test_it_checks_ownership(client, bob, alice, done_image):
    generation = done_image.generation
    client.force_login(bob)
    assert client.get(reverse("gallery:image", args=[done_image.pk])).status_code == 404
    assert client.get(reverse("gallery:thumbnail", args=[done_image.pk])).status_code == 404
    assert client.get(reverse("gallery:thumbnail_large", args=[done_image.pk])).status_code == 404
    Generation.objects.filter(pk=generation.pk).update(status="failed")
    assert client.post(reverse("gallery:retry", args=[generation.pk])).status_code == 404
    generation.refresh_from_db()
    assert generation.status == "failed"
    response = client.get(reverse("gallery:updates"), {"ids": str(generation.pk)})
    assert response.status_code == 200
    assert f"card-{generation.pk}" not in response.content.decode()
