"""Share links: public, revocable, expiring URLs to one image."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from gallery.models import Image, ShareLink
from tests.factories import done_generation


@pytest.fixture
def image(alice) -> Image:
    return done_generation(alice, "a secret recipe for banana bread").images.get()


def share(client, image: Image, **data) -> ShareLink:
    response = client.post(reverse("gallery:share_create", args=[image.pk]), data)
    assert response.status_code == 302
    return ShareLink.objects.latest("id")


def meta(html: str, name: str) -> str:
    match = re.search(rf'<meta (?:property|name)="{re.escape(name)}" content="([^"]*)"', html)
    assert match, f"no meta {name}"
    return match.group(1)


def test_it_makes_a_random_token_unrelated_to_ids(client, alice, image):
    client.force_login(alice)
    first = share(client, image)
    second = share(client, image)
    # 24 random bytes in URL-safe base64: 192 bits, in 32 characters without padding.
    for link in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", link.token), link.token
        assert len(base64.urlsafe_b64decode(link.token)) == 24
    # Two links in a row (consecutive ids, same image) share nothing a counter or an id would
    # leave: random tokens agree on their first or last four characters once in 8 million.
    assert first.token != second.token
    assert first.token[:4] != second.token[:4]
    assert first.token[-4:] != second.token[-4:]


def test_it_serves_the_public_page_without_login(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    client.logout()
    response = client.get(f"/s/{link.token}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert response["Referrer-Policy"] == "no-referrer"
    assert "noindex" in response["X-Robots-Tag"]
    assert '<meta name="robots" content="noindex, nofollow">' in html
    image_url = f"http://testserver/s/{link.token}/image"
    assert meta(html, "og:image") == image_url
    assert meta(html, "twitter:image") == image_url
    assert meta(html, "twitter:card") == "summary_large_image"
    assert meta(html, "og:image:width") == str(image.width)
    assert meta(html, "og:image:height") == str(image.height)
    assert meta(html, "og:image:type") == "image/png"
    assert "banana bread" not in html  # the prompt is hidden unless the owner chose to show it


# Words of the image fixture's prompt that nothing else on the share page or its responses says.
PROMPT_WORDS = ("secret", "recipe", "bread")


def carries_prompt(text: str) -> bool:
    return any(word in text.lower() for word in PROMPT_WORDS)


def title(html: str) -> str:
    match = re.search(r"<title>([^<]*)</title>", html)
    assert match, "no title"
    return match.group(1)


PREVIEW_TAGS = [
    "description",
    "og:title",
    "og:description",
    "og:image:alt",
    "twitter:title",
    "twitter:description",
    "twitter:image:alt",
]


def test_it_keeps_a_hidden_prompt_out_of_the_image_file_name(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    client.logout()
    response = client.get(f"/s/{link.token}/image")
    assert response["Content-Disposition"] == 'inline; filename="banana-shared-image.png"'


def test_it_keeps_a_hidden_prompt_out_of_every_header(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    client.logout()
    for url in (f"/s/{link.token}/", f"/s/{link.token}/image"):
        response = client.get(url)
        assert response.status_code == 200
        for header, value in response.items():
            assert not carries_prompt(value), (url, header, value)


def test_it_keeps_a_hidden_prompt_out_of_the_page_metadata(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    client.logout()
    html = client.get(f"/s/{link.token}/").content.decode()
    assert title(html) == "An image shared from Banana Gallery"
    for name in PREVIEW_TAGS:
        assert not carries_prompt(meta(html, name)), name
    assert meta(html, "og:title") == "An image shared from Banana Gallery"
    assert not carries_prompt(html)


def test_it_names_and_describes_the_image_by_a_shown_prompt(client, alice, image):
    client.force_login(alice)
    link = share(client, image, show_prompt="on")
    client.logout()
    response = client.get(f"/s/{link.token}/image")
    disposition = 'inline; filename="banana-a-secret-recipe-for-banana-bread.png"'
    assert response["Content-Disposition"] == disposition
    html = client.get(f"/s/{link.token}/").content.decode()
    assert title(html) == "a secret recipe for banana bread · Banana Gallery"
    for name in PREVIEW_TAGS:
        assert meta(html, name) == "a secret recipe for banana bread", name


def test_it_shows_the_prompt_only_when_the_owner_chose_to(client, alice, image):
    client.force_login(alice)
    link = share(client, image, show_prompt="on")
    client.logout()
    html = client.get(f"/s/{link.token}/").content.decode()
    assert "a secret recipe for banana bread" in html
    assert "banana bread" in meta(html, "og:title")


def test_it_serves_the_raw_image_under_the_token(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    client.logout()
    response = client.get(f"/s/{link.token}/image")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "no-referrer"
    assert "no-cache" in response["Cache-Control"]
    body = b"".join(response.streaming_content)
    assert body[:4] == b"\x89PNG"
    assert hashlib.sha256(body).hexdigest() == image.sha256


def test_it_counts_views(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    client.logout()
    for _ in range(3):
        client.get(f"/s/{link.token}/")
    link.refresh_from_db()
    assert link.view_count == 3
    assert link.last_viewed_at is not None


def assert_gone(response) -> None:
    """The friendly page for a link that no longer works, with status 404."""
    assert response.status_code == 404
    html = response.content.decode()
    assert "<h1>This link was revoked or has expired</h1>" in html
    assert f'href="{reverse("gallery:index")}"' in html
    assert "Traceback" not in html and "Page not found" not in html  # not Django's debug 404
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert "no-cache" in response["Cache-Control"]


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request, settings) -> bool:
    settings.DEBUG = request.param
    return request.param


def test_it_shows_a_friendly_404_at_once_after_revoking(client, alice, image, debug):
    client.force_login(alice)
    link = share(client, image)
    assert client.get(f"/s/{link.token}/").status_code == 200
    response = client.post(reverse("gallery:share_revoke", args=[link.pk]))
    assert response.status_code == 302
    client.logout()
    assert_gone(client.get(f"/s/{link.token}/"))
    assert_gone(client.get(f"/s/{link.token}/image"))


def test_it_shows_a_friendly_404_once_expired(client, alice, image, debug):
    client.force_login(alice)
    link = share(client, image, expires_in_hours="1")
    assert link.expires_at - timezone.now() == pytest.approx(
        timedelta(hours=1), abs=timedelta(seconds=5)
    )
    ShareLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    client.logout()
    assert_gone(client.get(f"/s/{link.token}/"))
    assert_gone(client.get(f"/s/{link.token}/image"))
    link.refresh_from_db()
    assert link.view_count == 0


def test_it_shows_a_friendly_404_for_an_unknown_token(client, db, debug):
    assert_gone(client.get("/s/not-a-token/"))
    assert_gone(client.get("/s/not-a-token/image"))


def test_it_lists_the_owners_links_with_their_state(client, alice, bob, image):
    client.force_login(alice)
    active = share(client, image)
    revoked = share(client, image)
    revoked.revoke()
    html = client.get(reverse("gallery:shares")).content.decode()
    assert active.token in html
    assert "Revoked" in html
    client.force_login(bob)
    html = client.get(reverse("gallery:shares")).content.decode()
    assert active.token not in html and "No share links yet" in html


def test_it_checks_ownership(client, alice, bob, image):
    client.force_login(alice)
    link = share(client, image)
    client.force_login(bob)
    assert client.post(reverse("gallery:share_create", args=[image.pk])).status_code == 404
    assert client.post(reverse("gallery:share_revoke", args=[link.pk])).status_code == 404
    link.refresh_from_db()
    assert link.is_active
    assert ShareLink.objects.count() == 1


def test_it_uses_site_url_for_the_preview_image_when_set(client, alice, image, settings):
    settings.SITE_URL = "https://bananas.example"
    client.force_login(alice)
    link = share(client, image)
    html = client.get(f"/s/{link.token}/").content.decode()
    assert meta(html, "og:image") == f"https://bananas.example/s/{link.token}/image"


def test_it_gives_out_share_links_on_site_url_on_the_detail_page(client, alice, image, settings):
    client.force_login(alice)
    link = share(client, image)
    detail = image.generation.get_absolute_url()
    assert f'value="http://testserver/s/{link.token}/"' in client.get(detail).content.decode()
    # Behind a proxy that passes its own host on, the link is still the public one.
    settings.SITE_URL = "https://bananas.example/"
    html = client.get(detail, HTTP_HOST="127.0.0.1").content.decode()
    assert f'value="https://bananas.example/s/{link.token}/"' in html
    assert f'data-copy-value="https://bananas.example/s/{link.token}/"' in html
    assert "127.0.0.1" not in html
