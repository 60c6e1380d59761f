"""Personal API tokens and the JSON API (api/): the token page, Bearer auth (a bad, revoked or
missing token, a session without one), each endpoint, ownership (another user's ids are 404),
the one error shape, the form's validation, limits and budget as for the form, the per-token
request limit, S3 redirects for files, a generation made through the API and the real pipeline,
and the OpenAPI schema checked against the specification."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from openapi_spec_validator import validate
from PIL import Image as PILImage

from accounts.models import Preferences
from api.models import ApiToken, token_hash
from gallery import views
from gallery.models import Collection, Generation, Image
from ledger.models import LedgerEntry
from tests.factories import done_generation, make_entry, make_generation
from tests.support import finished, run_queued_tasks
from tests.test_budgets import noon, renews
from tests.test_export import hang_up

API = "/api/v1"
TOKENS = reverse("api:tokens")


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def new_token(user, name: str = "script") -> str:
    return ApiToken.create_for(user, name)[1]


@pytest.fixture
def alice_token(alice) -> str:
    return new_token(alice)


@pytest.fixture
def bob_token(bob) -> str:
    return new_token(bob)


def post_json(client, path: str, data, secret: str, **extra):
    body = data if isinstance(data, str) else json.dumps(data)
    return client.post(path, body, content_type="application/json", headers=bearer(secret), **extra)


def generate(client, secret: str, **data):
    return post_json(client, f"{API}/generations", {"prompt": "a red kite", **data}, secret)


def error(response, status: int, code: str) -> dict:
    """The error body, after checking it has the one documented shape."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# The token page


def test_it_makes_a_token_and_shows_its_secret_only_once(client, alice):
    client.force_login(alice)
    response = client.post(TOKENS, {"name": "nightly backup"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    secret = re.search(r'value="(bnn_[A-Za-z0-9_-]{43})"', page).group(1)
    token = ApiToken.objects.get(user=alice)
    assert token.name == "nightly backup"
    assert token.prefix == secret[:12]
    # Only the keyed hash is kept: the secret is nowhere in the row.
    assert token.hash == token_hash(secret) and secret not in str(vars(token))
    assert ApiToken.objects.with_secret(secret) == token

    listed = client.get(TOKENS).content.decode()
    assert secret not in listed
    assert f"{token.prefix}…" in listed and "nightly backup" in listed
    assert client.get(f"{API}/generations", headers=bearer(secret)).status_code == 200


def test_it_refuses_a_token_without_a_name_or_with_a_name_in_use(client, alice):
    client.force_login(alice)
    response = client.post(TOKENS, {"name": "  "})
    assert response.status_code == 400
    assert "Name the token: say what will use it." in response.content.decode()
    new_token(alice, "backup")
    response = client.post(TOKENS, {"name": "Backup"})
    assert response.status_code == 400
    assert "You already have a token of that name" in response.content.decode()
    assert ApiToken.objects.count() == 1


def test_it_revokes_a_token_and_the_api_refuses_it_at_once(client, alice, alice_token):
    other = new_token(alice, "other script")
    token = ApiToken.objects.with_secret(alice_token)
    client.force_login(alice)
    response = client.post(reverse("api:revoke", args=[token.pk]))
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert "Revoked" in client.get(TOKENS).content.decode()

    response = client.get(f"{API}/generations", headers=bearer(alice_token))
    assert error(response, 401, "token_revoked")["message"].startswith("That API token was")
    # Her other tokens go on working.
    assert client.get(f"{API}/generations", headers=bearer(other)).status_code == 200


def test_it_checks_ownership_of_tokens(client, alice, bob, alice_token):
    token = ApiToken.objects.with_secret(alice_token)
    client.force_login(bob)
    assert client.post(reverse("api:revoke", args=[token.pk])).status_code == 404
    assert alice_token[:12] not in client.get(TOKENS).content.decode()
    token.refresh_from_db()
    assert token.revoked_at is None


def test_it_keeps_the_token_page_for_signed_in_users(client):
    response = client.get(TOKENS)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_it_lets_staff_revoke_a_token_in_the_admin(client, alice, alice_token, charlie):
    charlie.is_staff = charlie.is_superuser = True
    charlie.save()
    token = ApiToken.objects.with_secret(alice_token)
    client.force_login(charlie)
    page = client.get(reverse("admin:api_apitoken_change", args=[token.pk])).content.decode()
    assert token.prefix in page and token.hash not in page
    response = client.post(
        reverse("admin:api_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    error(client.get(f"{API}/generations", headers=bearer(alice_token)), 401, "token_revoked")


# Signing in with a token


def test_it_refuses_requests_without_a_valid_token(client, alice, alice_token):
    for headers in [{}, {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="}, bearer("")]:
        response = client.get(f"{API}/generations", headers=headers)
        assert error(response, 401, "unauthorized")["message"].startswith("Send a personal")
        assert response["WWW-Authenticate"].startswith("Bearer")
    for wrong in ["bnn_" + "x" * 43, alice_token[:-1], "not-even-ours"]:
        response = client.get(f"{API}/generations", headers=bearer(wrong))
        error(response, 401, "invalid_token")


def test_it_refuses_a_session_without_a_token(client, alice):
    """A signed-in browser is not signed in to the API: its cookie is sent by any page that
    posts to the site, and the API has no CSRF check, so a cookie must not be a way in."""
    client.force_login(alice)
    error(client.get(f"{API}/generations"), 401, "unauthorized")
    response = client.post(
        f"{API}/generations", json.dumps({"prompt": "csrf"}), content_type="application/json"
    )
    error(response, 401, "unauthorized")
    assert not Generation.objects.exists()


def test_it_refuses_the_token_of_an_inactive_or_waiting_account(client, alice, alice_token):
    from accounts.models import Approval

    approval = Approval.objects.create(user=alice)
    error(client.get(f"{API}/generations", headers=bearer(alice_token)), 401, "account_inactive")
    approval.decide(Approval.Status.APPROVED, by=None)
    assert client.get(f"{API}/generations", headers=bearer(alice_token)).status_code == 200
    alice.is_active = False
    alice.save()
    error(client.get(f"{API}/generations", headers=bearer(alice_token)), 401, "account_inactive")


def test_it_records_when_a_token_was_last_used(client, alice, alice_token):
    token = ApiToken.objects.with_secret(alice_token)
    assert token.last_used_at is None
    client.get(f"{API}/generations", headers=bearer(alice_token))
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    client.get(f"{API}/generations", headers=bearer(alice_token))
    token.refresh_from_db()
    assert token.last_used_at == first  # written at most once a minute
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    client.get(f"{API}/generations", headers=bearer(alice_token))
    token.refresh_from_db()
    assert token.last_used_at > first


def test_it_keeps_tokens_working_while_the_secret_key_is_rotated(
    client, alice, alice_token, settings
):
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    assert client.get(f"{API}/generations", headers=bearer(alice_token)).status_code == 200
    settings.SECRET_KEY_FALLBACKS = []
    error(client.get(f"{API}/generations", headers=bearer(alice_token)), 401, "invalid_token")


def test_it_limits_requests_per_token(client, alice, alice_token, settings):
    settings.RATELIMIT_API_TOKEN = "3/m"
    other = new_token(alice, "other")
    for _ in range(3):
        assert client.get(f"{API}/generations", headers=bearer(alice_token)).status_code == 200
    response = client.get(f"{API}/generations", headers=bearer(alice_token))
    message = error(response, 429, "rate_limited")["message"]
    assert re.fullmatch(
        r"Too many requests with this token: at most 3 are allowed in a short time; try again "
        r"in about \d+ seconds?\.",
        message,
    ), message
    assert 1 <= int(response["Retry-After"]) <= 60
    # Per token: the same user's other token is not slowed down.
    assert client.get(f"{API}/generations", headers=bearer(other)).status_code == 200


# Making generations


def test_it_makes_generations_as_the_form_does(client, alice, alice_token):
    response = generate(
        client, alice_token, prompt="two kites", aspect_ratio="16:9", resolution="2K", count=2
    )
    assert response.status_code == 201, response.content
    made = response.json()["generations"]
    assert len(made) == 2
    generations = list(Generation.objects.owned_by(alice).order_by("id"))
    assert [g["id"] for g in made] == [g.pk for g in generations]
    for generation in generations:
        assert (generation.prompt, generation.aspect_ratio, generation.resolution) == (
            "two kites",
            "16:9",
            "2K",
        )
        assert generation.status == Generation.Status.QUEUED
    assert generations[0].post == generations[1].post  # one post, two variations
    assert made[0]["status"] == "queued" and made[0]["is_pending"] is True
    assert made[0]["images"] == []
    # The defaults are the form's.
    single = generate(client, alice_token).json()["generations"][0]
    assert (single["aspect_ratio"], single["resolution"], single["output_format"]) == (
        "auto",
        "1K",
        "png",
    )


def test_it_refuses_bad_input_with_the_forms_messages(client, alice, alice_token):
    fields = error(generate(client, alice_token, prompt=""), 422, "invalid")["fields"]
    assert fields == {"prompt": "Write a prompt: describe the image you want."}
    fields = error(
        generate(client, alice_token, aspect_ratio="7:3", count=9, resolution="8K"), 422, "invalid"
    )["fields"]
    assert fields["aspect_ratio"].startswith("“7:3” is not a valid aspect ratio; choose one of")
    assert fields["resolution"] == "“8K” is not a valid resolution; choose one of 1K, 2K, 4K."
    assert fields["count"] == "Ask for 1 to 4 images at a time."
    fields = error(generate(client, alice_token, prompt="x" * 20001), 422, "invalid")["fields"]
    assert "the most the image service takes is" in fields["prompt"]
    # Not the right JSON at all: the same shape, with the field that is wrong.
    fields = error(generate(client, alice_token, prompt=["a", "list"]), 422, "invalid")["fields"]
    assert set(fields) == {"prompt"}
    missing = post_json(client, f"{API}/generations", {}, alice_token)
    assert error(missing, 422, "invalid")["fields"] == {"prompt": "Field required"}
    broken = post_json(client, f"{API}/generations", '{"prompt": ', alice_token)
    assert error(broken, 400, "bad_request")["message"] == "Cannot parse request body"
    assert not Generation.objects.exists()


def test_it_refuses_a_post_over_the_budget_as_the_form_does(client, alice, alice_token, settings):
    settings.BUDGET_MONTHLY_CREDITS = 10
    make_entry(alice, timezone.now(), credits=5)
    response = generate(client, alice_token, count=4, resolution="2K")
    assert error(response, 403, "monthly_budget")["message"] == (
        f"This post needs 8 credits and you have 5 left this month; your budget renews on "
        f"{renews()}."
    )
    assert "Retry-After" not in response
    assert Generation.objects.count() == 1  # the ledger entry's own
    assert generate(client, alice_token, count=2, resolution="2K").status_code == 201


def test_it_refuses_a_post_over_the_daily_and_pending_caps(client, alice, alice_token, settings):
    settings.DAILY_GENERATIONS_PER_USER = 5
    settings.MAX_PENDING_PER_USER = 0
    today = timezone.localdate()
    make_entry(alice, noon(today - timedelta(days=1)))  # yesterday's
    for _ in range(3):
        make_entry(alice, timezone.now())
    message = error(generate(client, alice_token, count=3), 403, "daily_limit")["message"]
    assert message == (
        "This post asks for 3 images and you have 2 left today (of 5); ask for fewer, or make "
        "more tomorrow."
    )
    settings.DAILY_GENERATIONS_PER_USER = 0
    settings.MAX_PENDING_PER_USER = 3
    make_generation(alice, status="generating")
    make_generation(alice, status="downloading")
    message = error(generate(client, alice_token, count=2), 429, "too_many_pending")["message"]
    assert message == (
        "You have 2 images on their way, and you can have at most 3 at once: ask for 1 or "
        "fewer, or try again when some are done."
    )
    assert generate(client, alice_token, count=1).status_code == 201


def test_it_counts_api_posts_in_the_users_rate_limit_with_the_web(
    client, alice, alice_token, settings
):
    settings.RATELIMIT_GENERATE = "5/m"
    settings.MAX_PENDING_PER_USER = 0
    assert generate(client, alice_token, count=4).status_code == 201
    response = generate(client, alice_token, count=4)
    message = error(response, 429, "rate_limited")["message"]
    assert re.fullmatch(
        r"That is a lot of images in a short time: you can ask for 1 more now, or for more in "
        r"about \d+ seconds?\.",
        message,
    ), message
    assert 1 <= int(response["Retry-After"]) <= 60
    # The user's limit, not the token's: the web form is refused too.
    client.force_login(alice)
    data = {"prompt": "p", "aspect_ratio": "auto", "resolution": "1K", "output_format": "png"}
    assert client.post(reverse("gallery:create"), {**data, "count": "1"}).status_code == 302
    page = client.post(reverse("gallery:create"), {**data, "count": "1"})
    assert page.status_code == 400
    assert Generation.objects.count() == 5


# Reading, listing, downloading and deleting


def test_it_shows_a_generation_with_its_timings_and_images(client, alice, alice_token):
    generation = done_generation(alice, "a castle", images=2, aspect_ratio="16:9")
    response = client.get(f"{API}/generations/{generation.pk}", headers=bearer(alice_token))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == generation.pk and body["prompt"] == "a castle"
    assert body["status"] == "done" and body["status_text"] == "Done"
    assert body["is_pending"] is False
    assert body["timings"] == {"waiting": 4.0, "rendering": 6.0, "total": 10.0}
    assert body["web_url"] == f"http://testserver{generation.get_absolute_url()}"
    images = body["images"]
    assert [i["index"] for i in images] == [0, 1]
    first = generation.images.get(index=0)
    assert images[0]["file_url"] == f"http://testserver{API}/images/{first.pk}/file"
    assert (images[0]["width"], images[0]["height"]) == (first.width, first.height)

    # A download is the web page's: the prompt and settings written in, as the owner chose.
    response = client.get(images[0]["download_url"], headers=bearer(alice_token))
    assert response.status_code == 200
    data = b"".join(response.streaming_content)
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.text["Description"] == "a castle"
    assert response["Content-Disposition"] == f'attachment; filename="{first.download_name}"'
    inline = client.get(images[0]["file_url"], headers=bearer(alice_token))
    assert inline["Content-Disposition"].startswith("inline")
    assert inline["Cache-Control"] == "private, max-age=86400"
    assert hashlib.sha256(b"".join(inline.streaming_content)).hexdigest() == first.sha256
    thumbnail = client.get(images[0]["thumbnail_url"], headers=bearer(alice_token))
    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/webp"


def test_it_lists_the_gallery_with_its_filters_and_cursor(client, alice, bob, alice_token):
    made = [make_generation(alice, f"kite {i}") for i in range(7)]
    failed = make_generation(alice, "a failed castle", status="failed")
    favorite = make_generation(alice, "a favourite castle", is_favorite=True)
    make_generation(bob, "bob's kite")
    url = f"{API}/generations?limit=3"
    seen = []
    while url:
        page = client.get(url, headers=bearer(alice_token)).json()
        assert len(page["generations"]) <= 3
        seen += [g["id"] for g in page["generations"]]
        url = page["next_url"]
        assert (url is None) == (page["next_cursor"] is None)
    assert seen == [g.pk for g in [favorite, failed, *reversed(made)]]

    def ids(query: str) -> list[int]:
        response = client.get(f"{API}/generations?{query}", headers=bearer(alice_token))
        assert response.status_code == 200, response.content
        return [g["id"] for g in response.json()["generations"]]

    assert ids("status=failed") == [failed.pk]
    assert ids("favorites=true") == [favorite.pk]
    assert ids("q=castle") == [favorite.pk, failed.pk]
    assert ids(f"q=kite&before={made[3].pk}") == [g.pk for g in reversed(made[:3])]
    page = client.get(f"{API}/generations?q=kite&limit=2", headers=bearer(alice_token)).json()
    assert page["next_url"] == (
        f"http://testserver{API}/generations?q=kite&limit=2&before={page['next_cursor']}"
    )

    fields = error(
        client.get(f"{API}/generations?status=lost", headers=bearer(alice_token)), 422, "invalid"
    )["fields"]
    assert fields == {"status": "Select a valid choice. lost is not one of the available choices."}
    response = client.get(f"{API}/generations?limit=500", headers=bearer(alice_token))
    assert set(error(response, 422, "invalid")["fields"]) == {"limit"}


def test_it_deletes_a_generation_with_its_files(
    client, alice, alice_token, django_capture_on_commit_callbacks
):
    generation = done_generation(alice)
    image = generation.images.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"{API}/generations/{generation.pk}", headers=bearer(alice_token))
    assert response.status_code == 204
    assert not Generation.objects.filter(pk=generation.pk).exists()
    assert not image.file.storage.exists(image.file.name)
    again = client.delete(f"{API}/generations/{generation.pk}", headers=bearer(alice_token))
    assert error(again, 404, "not_found")["message"] == f"You have no generation {generation.pk}."


def test_it_checks_ownership(client, alice, bob_token):
    generation = done_generation(alice)
    image = generation.images.get()
    for method, path in [
        ("get", f"{API}/generations/{generation.pk}"),
        ("delete", f"{API}/generations/{generation.pk}"),
        ("get", f"{API}/images/{image.pk}/file"),
        ("get", f"{API}/images/{image.pk}/file?download=1"),
        ("get", f"{API}/images/{image.pk}/thumbnail"),
    ]:
        response = getattr(client, method)(path, headers=bearer(bob_token))
        error(response, 404, "not_found")
    assert client.get(f"{API}/generations", headers=bearer(bob_token)).json()["generations"] == []
    assert Generation.objects.filter(pk=generation.pk).exists()


def test_it_redirects_to_presigned_urls_on_s3(client, alice, alice_token, s3_bucket):
    image = done_generation(alice, "a secret recipe").images.get()
    body = client.get(f"{API}/generations/{image.generation_id}", headers=bearer(alice_token))
    # The file itself, as a download is when the owner keeps files as they were made.
    Preferences.objects.create(user=alice, file_provenance=False)
    download_url = body.json()["images"][0]["download_url"]
    response = client.get(download_url, headers=bearer(alice_token))
    assert response.status_code == 302
    url = response["Location"]
    assert url.startswith(f"{s3_bucket.endpoint_url}/{s3_bucket.name}/")
    answer = requests.get(url, timeout=5)
    assert answer.content == s3_bucket.read(image.file.name)
    assert answer.headers["Content-Disposition"] == (
        f'attachment; filename="{image.download_name}"'
    )


# Errors


def test_it_answers_every_error_in_one_shape(client, alice, alice_token, caplog):
    error(client.put(f"{API}/generations", headers=bearer(alice_token)), 405, "method_not_allowed")
    error(client.get(f"{API}/no/such/thing", headers=bearer(alice_token)), 404, "not_found")
    error(client.get(f"{API}/generations/abc", headers=bearer(alice_token)), 422, "invalid")
    too_big = client.get(f"{API}/generations/{2**64}", headers=bearer(alice_token))
    assert set(error(too_big, 422, "invalid")["fields"]) == {"generation_id"}
    # An unexpected failure: an image whose file is gone from storage.
    image = done_generation(alice).images.get()
    image.file.storage.delete(image.file.name)
    response = client.get(f"{API}/images/{image.pk}/file", headers=bearer(alice_token))
    assert error(response, 500, "server_error")["message"].startswith("Something went wrong")
    assert "API request failed: GET" in caplog.text
    assert "Traceback" not in response.content.decode()


# Collections


def patch_json(client, path: str, data, secret: str):
    return client.patch(
        path, json.dumps(data), content_type="application/json", headers=bearer(secret)
    )


def test_it_makes_lists_shows_renames_and_deletes_a_collection(client, alice, bob, alice_token):
    Collection.objects.create(owner=bob, name="Bob's")
    response = post_json(
        client, f"{API}/collections", {"name": "  Trips ", "description": "Away"}, alice_token
    )
    assert response.status_code == 201, response.content
    made = response.json()
    collection = Collection.objects.get(owner=alice)
    assert (collection.name, collection.description) == ("Trips", "Away")
    assert made["id"] == collection.pk and made["name"] == "Trips"
    assert made["item_count"] == 0
    assert made["web_url"] == f"http://testserver{collection.get_absolute_url()}"
    assert set(made) == {
        "id",
        "name",
        "description",
        "item_count",
        "created_at",
        "updated_at",
        "web_url",
    }
    # Without a description: an empty one.
    birds = post_json(client, f"{API}/collections", {"name": "Birds"}, alice_token).json()
    assert birds["description"] == ""

    listed = client.get(f"{API}/collections", headers=bearer(alice_token)).json()
    assert [c["name"] for c in listed["collections"]] == ["Birds", "Trips"]
    assert (
        client.get(f"{API}/collections/{collection.pk}", headers=bearer(alice_token)).json() == made
    )

    url = f"{API}/collections/{collection.pk}"
    renamed = patch_json(client, url, {"name": "Holidays"}, alice_token)
    assert renamed.status_code == 200, renamed.content
    assert renamed.json()["name"] == "Holidays" and renamed.json()["description"] == "Away"
    described = patch_json(client, url, {"description": ""}, alice_token).json()
    assert (described["name"], described["description"]) == ("Holidays", "")
    # The same name in another case is still its own.
    assert patch_json(client, url, {"name": "HOLIDAYS"}, alice_token).json()["name"] == "HOLIDAYS"
    collection.refresh_from_db()
    assert collection.name == "HOLIDAYS"

    assert client.delete(url, headers=bearer(alice_token)).status_code == 204
    assert not Collection.objects.filter(pk=collection.pk).exists()
    again = client.get(url, headers=bearer(alice_token))
    assert error(again, 404, "not_found")["message"] == f"You have no collection {collection.pk}."


def test_it_refuses_a_bad_collection_name_with_the_forms_messages(client, alice, alice_token):
    Collection.objects.create(owner=alice, name="Trips")
    birds = Collection.objects.create(owner=alice, name="Birds")
    taken = post_json(client, f"{API}/collections", {"name": "tRIPS"}, alice_token)
    assert error(taken, 422, "invalid")["fields"] == {
        "name": "You already have a collection named “tRIPS”."
    }
    empty = post_json(client, f"{API}/collections", {"name": "  "}, alice_token)
    assert error(empty, 422, "invalid")["fields"] == {"name": "Name the collection."}
    long = post_json(client, f"{API}/collections", {"name": "x" * 101}, alice_token)
    assert error(long, 422, "invalid")["fields"]["name"].startswith(
        "A collection's name is at most 100 characters long"
    )
    wordy = post_json(
        client, f"{API}/collections", {"name": "Cats", "description": "x" * 1001}, alice_token
    )
    assert set(error(wordy, 422, "invalid")["fields"]) == {"description"}
    missing = post_json(client, f"{API}/collections", {}, alice_token)
    assert error(missing, 422, "invalid")["fields"] == {"name": "Field required"}
    renamed = patch_json(client, f"{API}/collections/{birds.pk}", {"name": "trips"}, alice_token)
    assert error(renamed, 422, "invalid")["fields"] == {
        "name": "You already have a collection named “trips”."
    }
    assert sorted(Collection.objects.values_list("name", flat=True)) == ["Birds", "Trips"]


def test_it_deletes_a_collection_and_keeps_its_images(client, alice, alice_token):
    collection = Collection.objects.create(owner=alice, name="Trips")
    generation = done_generation(alice)
    collection.add(Generation.objects.all())
    image = generation.images.get()
    response = client.delete(f"{API}/collections/{collection.pk}", headers=bearer(alice_token))
    assert response.status_code == 204
    assert not Collection.objects.exists()
    assert Generation.objects.filter(pk=generation.pk).exists()
    assert Image.objects.filter(pk=image.pk).exists()
    assert image.file.storage.exists(image.file.name)


def test_it_lists_collections_in_a_flat_number_of_queries(client, alice, alice_token):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(f"{API}/collections", headers=bearer(alice_token))
        assert response.status_code == 200
        return len(captured), response.json()["collections"]

    client.get(f"{API}/collections", headers=bearer(alice_token))  # the token's first use
    first = Collection.objects.create(owner=alice, name="Set 0")
    first.add(Generation.objects.filter(pk=done_generation(alice).pk))
    one, listed = queries()
    assert [c["item_count"] for c in listed] == [1]
    for i in range(1, 6):
        collection = Collection.objects.create(owner=alice, name=f"Set {i}")
        collection.add(
            Generation.objects.filter(pk__in=[done_generation(alice).pk for _ in range(i)])
        )
    many, listed = queries()
    assert [c["item_count"] for c in listed] == [1, 1, 2, 3, 4, 5]
    assert many == one


def test_it_adds_lists_and_removes_a_collections_generations(client, alice, alice_token):
    collection = Collection.objects.create(owner=alice, name="Trips")
    made = [done_generation(alice, f"trip {i}") for i in range(5)]
    failed = make_generation(alice, "a failed trip", status="failed")
    done_generation(alice, "not in it")
    url = f"{API}/collections/{collection.pk}/generations"
    ids = [g.pk for g in [*made, failed]]
    response = post_json(client, url, {"generation_ids": ids}, alice_token)
    assert response.status_code == 200, response.content
    assert response.json() == {"added": 6, "item_count": 6}
    # Those in it already, or given twice, are not added again.
    again = post_json(client, url, {"generation_ids": [made[0].pk, made[0].pk]}, alice_token)
    assert again.json() == {"added": 0, "item_count": 6}

    seen, page_url = [], f"{url}?limit=4"
    while page_url:
        page = client.get(page_url, headers=bearer(alice_token)).json()
        assert len(page["generations"]) <= 4
        seen += [g["id"] for g in page["generations"]]
        page_url = page["next_url"]
        assert (page_url is None) == (page["next_cursor"] is None)
    assert seen == sorted(ids, reverse=True)
    first = client.get(f"{url}?limit=4", headers=bearer(alice_token)).json()
    assert first["next_url"] == f"http://testserver{url}?limit=4&before={first['next_cursor']}"
    assert first["generations"][0]["id"] == failed.pk and first["generations"][0]["images"] == []
    assert first["generations"][1]["images"][0]["file_url"].startswith(f"http://testserver{API}")
    # The gallery's filters apply.
    failed_only = client.get(f"{url}?status=failed", headers=bearer(alice_token)).json()
    assert [g["id"] for g in failed_only["generations"]] == [failed.pk]

    removed = post_json(
        client, f"{url}/remove", {"generation_ids": [made[0].pk, made[1].pk]}, alice_token
    )
    assert removed.status_code == 200, removed.content
    assert removed.json() == {"removed": 2, "item_count": 4}
    assert set(collection.gallery()) == {*made[2:], failed}
    assert Generation.objects.filter(pk=made[0].pk).exists()  # still in the gallery
    not_in_it = post_json(client, f"{url}/remove", {"generation_ids": [made[0].pk]}, alice_token)
    assert not_in_it.json() == {"removed": 0, "item_count": 4}


def test_it_refuses_bad_lists_of_generation_ids(client, alice, alice_token):
    collection = Collection.objects.create(owner=alice, name="Trips")
    url = f"{API}/collections/{collection.pk}/generations"
    mine = done_generation(alice)
    for path in [url, f"{url}/remove"]:
        too_many = post_json(client, path, {"generation_ids": list(range(1, 502))}, alice_token)
        assert set(error(too_many, 422, "invalid")["fields"]) == {"generation_ids"}
        none = post_json(client, path, {"generation_ids": []}, alice_token)
        assert set(error(none, 422, "invalid")["fields"]) == {"generation_ids"}
        huge = post_json(client, path, {"generation_ids": [mine.pk, 2**64]}, alice_token)
        bounds = f"Generation ids are whole numbers from 1 to {2**63 - 1}."
        assert error(huge, 422, "invalid")["fields"] == {"generation_ids": f"Value error, {bounds}"}
        missing = post_json(client, path, {}, alice_token)
        assert set(error(missing, 422, "invalid")["fields"]) == {"generation_ids"}
    # 500 is allowed.
    allowed = post_json(client, url, {"generation_ids": [mine.pk] * 500}, alice_token)
    assert allowed.json() == {"added": 1, "item_count": 1}


def test_it_checks_ownership_of_collections(client, alice, bob, alice_token, bob_token):
    collection = Collection.objects.create(owner=alice, name="Trips")
    generation = done_generation(alice)
    collection.add(Generation.objects.all())
    url = f"{API}/collections/{collection.pk}"
    body = {"generation_ids": [generation.pk]}
    for response in [
        client.get(url, headers=bearer(bob_token)),
        patch_json(client, url, {"name": "Mine now"}, bob_token),
        client.delete(url, headers=bearer(bob_token)),
        client.get(f"{url}/generations", headers=bearer(bob_token)),
        post_json(client, f"{url}/generations", body, bob_token),
        post_json(client, f"{url}/generations/remove", body, bob_token),
    ]:
        message = error(response, 404, "not_found")["message"]
        assert message == f"You have no collection {collection.pk}."
    assert client.get(f"{API}/collections", headers=bearer(bob_token)).json() == {"collections": []}
    collection.refresh_from_db()
    assert collection.name == "Trips" and collection.items.count() == 1

    # Another user's generation ids in one's own collection: a 404 that names them, and
    # nothing is added or removed.
    theirs = Collection.objects.create(owner=bob, name="Bob's")
    bobs = done_generation(bob)
    bobs_url = f"{API}/collections/{theirs.pk}/generations"
    response = post_json(client, bobs_url, {"generation_ids": [bobs.pk, generation.pk]}, bob_token)
    assert (
        error(response, 404, "not_found")["message"] == f"You have no generation {generation.pk}."
    )
    response = post_json(
        client,
        f"{url}/generations/remove",
        {"generation_ids": [generation.pk, bobs.pk, 2**62]},
        alice_token,
    )
    assert error(response, 404, "not_found")["message"] == (
        f"You have no generations {bobs.pk}, {2**62}."
    )
    assert not theirs.items.exists() and collection.items.count() == 1


def test_it_exports_a_collection_as_a_zip(client, rf, alice, bob_token, alice_token):
    collection = Collection.objects.create(owner=alice, name="Trips")
    owl = done_generation(alice, "an owl", images=2)
    done_generation(alice, "not in it")
    collection.add(Generation.objects.filter(pk=owl.pk))
    url = f"{API}/collections/{collection.pk}/export"
    error(client.get(url, headers=bearer(bob_token)), 404, "not_found")

    response = client.get(url, headers=bearer(alice_token))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    day = timezone.localdate().isoformat()
    assert response["Content-Disposition"] == (
        f'attachment; filename="banana-gallery-trips-{day}.zip"'
    )
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    about = json.loads(archive.read("manifest.json"))
    assert about["collection"] == {"id": collection.pk, "name": "Trips"}
    assert sorted(entry["image_id"] for entry in about["images"]) == sorted(
        owl.images.values_list("pk", flat=True)
    )
    assert {entry["file"] for entry in about["images"]} | {"manifest.json"} == set(
        archive.namelist()
    )

    empty = Collection.objects.create(owner=alice, name="Empty")
    response = client.get(f"{API}/collections/{empty.pk}/export", headers=bearer(alice_token))
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.namelist() == ["manifest.json"]
    assert json.loads(archive.read("manifest.json"))["count"] == 0

    # One export at a time, the web's and the API's together: one on its way (straight from
    # the view, as a WSGI server gets it) holds the next off until it ends.
    request = rf.get(reverse("gallery:collection_export", args=[collection.pk]))
    request.user = alice
    first = views.collection_export(request, collection.pk)
    next(iter(first.streaming_content))
    running = client.get(url, headers=bearer(alice_token))
    assert error(running, 409, "export_running")["message"].startswith("Your previous export")
    hang_up(first)
    assert client.get(url, headers=bearer(alice_token)).status_code == 200


def test_it_refuses_a_revoked_token_for_collections(client, alice, alice_token):
    collection = Collection.objects.create(owner=alice, name="Trips")
    ApiToken.objects.with_secret(alice_token).revoke()
    url = f"{API}/collections/{collection.pk}"
    for response in [
        client.get(f"{API}/collections", headers=bearer(alice_token)),
        post_json(client, f"{API}/collections", {"name": "Birds"}, alice_token),
        client.get(url, headers=bearer(alice_token)),
        client.delete(url, headers=bearer(alice_token)),
        post_json(client, f"{url}/generations", {"generation_ids": [1]}, alice_token),
        client.get(f"{url}/export", headers=bearer(alice_token)),
    ]:
        error(response, 401, "token_revoked")
    error(client.get(f"{API}/collections"), 401, "unauthorized")
    assert list(Collection.objects.values_list("name", flat=True)) == ["Trips"]


# The whole way, through the real pipeline


@pytest.mark.django_db(transaction=True)
def test_it_makes_an_image_through_the_pipeline_and_downloads_it(client, alice, simulator):
    secret = new_token(alice)
    made = generate(client, secret, prompt="a red fox in snow", aspect_ratio="16:9")
    assert made.status_code == 201
    generation = Generation.objects.get(pk=made.json()["generations"][0]["id"])
    run_queued_tasks(until=finished(generation))

    body = client.get(f"{API}/generations/{generation.pk}", headers=bearer(secret)).json()
    assert body["status"] == "done" and body["is_pending"] is False
    assert body["timings"]["rendering"] is not None
    [image] = body["images"]
    assert (image["width"], image["height"]) == (1376, 768)
    response = client.get(image["file_url"], headers=bearer(secret))
    data = b"".join(response.streaming_content)
    assert hashlib.sha256(data).hexdigest() == generation.images.get().sha256
    assert LedgerEntry.objects.filter(generation=generation).count() == 1


# The schema and its documentation


def test_it_serves_an_openapi_schema_that_validates(client):
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    validate(schema)
    assert schema["components"]["securitySchemes"]["TokenAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    operations = {
        (method.upper(), path) for path, item in schema["paths"].items() for method in item
    }
    assert operations == {
        ("POST", f"{API}/generations"),
        ("GET", f"{API}/generations"),
        ("GET", f"{API}/generations/{{generation_id}}"),
        ("DELETE", f"{API}/generations/{{generation_id}}"),
        ("GET", f"{API}/images/{{image_id}}/file"),
        ("GET", f"{API}/images/{{image_id}}/thumbnail"),
        ("GET", f"{API}/collections"),
        ("POST", f"{API}/collections"),
        ("GET", f"{API}/collections/{{collection_id}}"),
        ("PATCH", f"{API}/collections/{{collection_id}}"),
        ("DELETE", f"{API}/collections/{{collection_id}}"),
        ("GET", f"{API}/collections/{{collection_id}}/generations"),
        ("POST", f"{API}/collections/{{collection_id}}/generations"),
        ("POST", f"{API}/collections/{{collection_id}}/generations/remove"),
        ("GET", f"{API}/collections/{{collection_id}}/export"),
    }
    for item in schema["paths"].values():
        for operation in item.values():
            assert operation["security"] == [{"TokenAuth": []}]
    assert "ErrorOut" in schema["components"]["schemas"]


def test_it_serves_the_docs_from_vendored_files(client):
    response = client.get(f"{API}/docs")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page
    assert "<script>" not in page and "cdn" not in page.lower()
    assert "script-src 'self'" in response["Content-Security-Policy"]
