"""Share links: public, revocable, expiring URLs to one image, or to a collection (albums)."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gallery.models import Collection, Generation, Image, ShareLink
from gallery.views import PAGE_SIZE
from tests.factories import done_generation, make_generation


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


# Album links: one link to a whole collection, with the same options.


@pytest.fixture
def album(alice) -> Collection:
    collection = Collection.objects.create(
        owner=alice, name="Bakery", description="Loaves of the week"
    )
    collection.add(Generation.objects.filter(pk=done_generation(alice, "a secret rye").pk))
    return collection


def share_album(client, collection: Collection, **data) -> ShareLink:
    response = client.post(reverse("gallery:collection_share", args=[collection.pk]), data)
    assert response.status_code == 302
    link = ShareLink.objects.latest("id")
    assert response["Location"] == collection.get_absolute_url() + f"#link-{link.pk}"
    return link


def album_urls(link: ShareLink, image: Image) -> list[str]:
    return [
        reverse("album_image", args=[link.token, image.pk]),
        reverse("album_thumbnail", args=[link.token, image.pk]),
    ]


def test_it_shares_a_collection_as_an_album(client, alice, album):
    client.force_login(alice)
    link = share_album(client, album)
    assert (link.collection, link.image) == (album, None)
    image = Image.objects.get()
    client.logout()
    response = client.get(f"/s/{link.token}/")
    assert response.status_code == 200
    assert response["Referrer-Policy"] == "no-referrer"
    assert "noindex" in response["X-Robots-Tag"]
    html = response.content.decode()
    assert title(html) == "Bakery · Banana Gallery"
    assert "<h1>Bakery</h1>" in html and "Loaves of the week" in html
    assert meta(html, "og:image") == f"http://testserver/s/{link.token}/images/{image.pk}"
    for url in album_urls(link, image):
        assert url in html
    assert not carries_prompt(html)  # prompts stay hidden unless the owner shows them
    # None of the owner's controls, and no way to the owner's pages.
    for owner_only in ("/generations/", "/images/", "bulk-form", "favorite", "csrf"):
        assert owner_only not in html.replace(f"/s/{link.token}/images/", ""), owner_only
    link.refresh_from_db()
    assert link.view_count == 1


def test_it_serves_an_albums_images_under_its_token(client, alice, album):
    client.force_login(alice)
    link = share_album(client, album)
    image = Image.objects.get()
    client.logout()
    original, thumbnail = (client.get(url) for url in album_urls(link, image))
    assert original["Content-Type"] == "image/png"
    assert original["Content-Disposition"] == 'inline; filename="banana-shared-image.png"'
    assert "no-cache" in original["Cache-Control"]
    assert hashlib.sha256(b"".join(original.streaming_content)).hexdigest() == image.sha256
    assert thumbnail["Content-Type"] == "image/webp"
    assert thumbnail["Content-Disposition"] == 'inline; filename="banana-shared-image.webp"'
    assert b"".join(thumbnail.streaming_content)[8:12] == b"WEBP"
    for response in (original, thumbnail):
        assert response["X-Content-Type-Options"] == "nosniff"
        for header, value in response.items():
            assert not carries_prompt(value), (header, value)


def test_it_shows_the_prompts_of_an_album_only_when_the_owner_chose_to(client, alice, album):
    client.force_login(alice)
    link = share_album(client, album, show_prompt="on", expires_in_hours="24")
    assert link.expires_at > timezone.now()
    image = Image.objects.get()
    client.logout()
    html = client.get(f"/s/{link.token}/").content.decode()
    assert 'data-prompt="a secret rye"' in html and 'alt="a secret rye"' in html
    response = client.get(album_urls(link, image)[0])
    assert response["Content-Disposition"] == 'inline; filename="banana-a-secret-rye.png"'


def test_it_shows_an_album_as_the_collection_is_now(client, alice, album):
    client.force_login(alice)
    link = share_album(client, album)
    first = Image.objects.get()
    later = done_generation(alice, "added after the link")
    album.add(Generation.objects.filter(pk=later.pk))
    client.logout()
    html = client.get(f"/s/{link.token}/").content.decode()
    assert all(url in html for url in album_urls(link, later.images.get()))
    assert "2 images" in html

    album.remove(Generation.objects.filter(pk=first.generation_id))
    html = client.get(f"/s/{link.token}/").content.decode()
    assert not any(url in html for url in album_urls(link, first))
    for url in album_urls(link, first):
        assert_gone(client.get(url))  # at once, for the files too
    assert Image.objects.filter(pk=first.pk).exists()  # still in the owner's gallery


def test_it_serves_no_image_outside_the_album(client, alice, album):
    outside = done_generation(alice, "not in the album").images.get()
    unfinished = make_generation(alice, "still cooking", status="generating")
    album.add(Generation.objects.filter(pk=unfinished.pk))
    client.force_login(alice)
    link = share_album(client, album)
    single = share(client, outside)
    client.logout()
    for url in album_urls(link, outside):
        assert_gone(client.get(url))
    # Each kind of token opens only its own kind of URL.
    assert_gone(client.get(f"/s/{link.token}/image"))
    for url in album_urls(single, outside):
        assert_gone(client.get(url))
    assert "1 image" in client.get(f"/s/{link.token}/").content.decode()


def test_it_pages_an_album_like_the_gallery(client, alice, album):
    for i in range(PAGE_SIZE):
        album.add(Generation.objects.filter(pk=done_generation(alice, f"loaf {i}").pk))
    client.force_login(alice)
    link = share_album(client, album)
    client.logout()
    response = client.get(f"/s/{link.token}/")
    assert len(response.context["images"]) == PAGE_SIZE
    next_url = response.context["next_url"]
    assert next_url
    page = client.get(f"/s/{link.token}/" + next_url, headers={"HX-Request": "true"})
    assert page.content.decode().count('<article class="tile') == 1
    link.refresh_from_db()
    assert link.view_count == 1  # a page of more images is not another view


def test_it_shows_a_friendly_404_for_an_album_once_revoked_or_expired(client, alice, album, debug):
    client.force_login(alice)
    revoked, expired = share_album(client, album), share_album(client, album)
    image = Image.objects.get()
    client.post(reverse("gallery:share_revoke", args=[revoked.pk]))
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    client.logout()
    for link in (revoked, expired):
        assert_gone(client.get(f"/s/{link.token}/"))
        for url in album_urls(link, image):
            assert_gone(client.get(url))


def test_it_lists_album_links_with_the_image_links(client, alice, album, image):
    client.force_login(alice)
    link = share_album(client, album)
    share(client, image)
    html = client.get(reverse("gallery:shares")).content.decode()
    assert link.token in html
    assert 'aria-label="Album: open the collection Bakery"' in html
    html = client.get(album.get_absolute_url()).content.decode()
    assert f'id="link-{link.pk}"' in html and "Revoke" in html
    assert "· 1 active link</span>" in html


def test_it_checks_ownership_of_album_links(client, alice, bob, album):
    client.force_login(alice)
    link = share_album(client, album)
    client.force_login(bob)
    assert client.post(reverse("gallery:share_revoke", args=[link.pk])).status_code == 404
    assert link.token not in client.get(reverse("gallery:shares")).content.decode()
    link.refresh_from_db()
    assert link.is_active


def test_it_points_a_link_at_an_image_or_a_collection_never_both(alice, album, image):
    for targets in ({"image": image, "collection": album}, {}):
        with pytest.raises(IntegrityError), transaction.atomic():
            ShareLink.objects.create(**targets)


def test_it_has_a_constant_number_of_queries_per_album_page(client, alice, album):
    link = ShareLink.objects.create(collection=album)
    client.get(f"/s/{link.token}/")

    def grow(to: int) -> None:
        for i in range(album.items.count(), to):
            album.add(Generation.objects.filter(pk=done_generation(alice, f"loaf {i}").pk))

    grow(10)
    with CaptureQueriesContext(connection) as few:
        assert client.get(f"/s/{link.token}/").status_code == 200
    grow(50)
    with CaptureQueriesContext(connection) as many:
        response = client.get(f"/s/{link.token}/")
    assert len(response.context["images"]) == PAGE_SIZE
    assert len(many) == len(few)


def test_it_gives_out_album_links_on_site_url(client, alice, album, settings):
    client.force_login(alice)
    link = share_album(client, album)
    settings.SITE_URL = "https://bananas.example/"
    html = client.get(album.get_absolute_url(), HTTP_HOST="127.0.0.1").content.decode()
    assert f'value="https://bananas.example/s/{link.token}/"' in html
    assert f'data-copy-value="https://bananas.example/s/{link.token}/"' in html
    assert "127.0.0.1" not in html


# Options: password, preview only, maximum views, note, edited by the owner.

SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


@pytest.fixture(params=["image", "album"])
def kind(request) -> str:
    return request.param


def make_link(client, alice, kind: str, **data) -> tuple[ShareLink, str]:
    """A link made through the share form, and one URL of an image it serves; logged out."""
    client.force_login(alice)
    if kind == "album":
        collection = Collection.objects.create(owner=alice, name="Bakery")
        collection.add(Generation.objects.filter(pk=done_generation(alice, "a secret rye").pk))
        link = share_album(client, collection, **data)
        file_url = album_urls(link, Image.objects.get())[0]
    else:
        link = share(client, done_generation(alice, "a secret recipe").images.get(), **data)
        file_url = reverse("share_image", args=[link.token])
    client.logout()
    return link, file_url


def test_it_hashes_a_links_password(alice, image):
    link = ShareLink(image=image)
    link.set_password("open sesame")
    link.save()
    assert link.password != "open sesame" and link.has_password
    assert link.check_password("open sesame")
    assert not link.check_password("open sesam")
    link.set_password("")
    assert not link.has_password and not link.check_password("")


def test_it_asks_for_the_password_before_showing_anything(client, alice, kind):
    link, file_url = make_link(client, alice, kind, password="open sesame", show_prompt="on")
    response = client.get(link.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert "protected by a password" in html
    # A browser posts "Origin: null" under "no-referrer", which the CSRF check refuses.
    assert response["Referrer-Policy"] == "same-origin"
    assert "secret" not in html and file_url not in html
    assert client.get(file_url).status_code == 404
    link.refresh_from_db()
    assert link.view_count == 0

    wrong = client.post(link.get_absolute_url(), {"password": "open sesam"})
    assert wrong.status_code == 400
    assert "That password is not right" in wrong.content.decode()
    assert client.get(file_url).status_code == 404

    right = client.post(link.get_absolute_url(), {"password": "open sesame"})
    assert right.status_code == 302 and right["Location"] == link.get_absolute_url()
    page = client.get(link.get_absolute_url()).content.decode()
    assert file_url in page and "secret" in page
    assert client.get(file_url).status_code == 200
    # Another browser has not typed it.
    client.cookies.clear()
    assert client.get(file_url).status_code == 404


def test_it_locks_a_link_again_when_its_password_changes(client, alice, image):
    client.force_login(alice)
    link = share(client, image, password="old one")
    client.logout()
    client.post(link.get_absolute_url(), {"password": "old one"})
    assert client.get(reverse("share_image", args=[link.token])).status_code == 200
    link.set_password("new one")
    link.save()
    assert client.get(reverse("share_image", args=[link.token])).status_code == 404
    assert "protected by a password" in client.get(link.get_absolute_url()).content.decode()


def test_it_shows_only_a_title_in_a_password_links_preview(client, alice, kind):
    link, _ = make_link(client, alice, kind, password="open sesame", show_prompt="on")
    html = client.get(link.get_absolute_url(), HTTP_USER_AGENT=SLACK).content.decode()
    noun = "album" if kind == "album" else "image"
    assert meta(html, "og:title") == f"A password-protected {noun} on Banana Gallery"
    assert "og:image" not in html and "og:description" not in html
    assert 'name="description"' not in html and "twitter:image" not in html
    assert "secret" not in html and "Bakery" not in html


def test_it_limits_wrong_passwords_per_address_and_says_when_to_try_again(
    client, alice, kind, settings
):
    settings.RATELIMIT_SHARE_PASSWORD = "3/m"
    link, _ = make_link(client, alice, kind, password="open sesame")
    for _ in range(2):
        response = client.post(link.get_absolute_url(), {"password": "guess"})
        assert response.status_code == 400
    response = client.post(link.get_absolute_url(), {"password": "guess"})
    assert response.status_code == 429
    assert "Too many wrong passwords. You can try again in about" in response.content.decode()
    assert 0 < int(response["Retry-After"]) <= 60
    # Locked out, even the right one waits: the guesser learns nothing.
    response = client.post(link.get_absolute_url(), {"password": "open sesame"})
    assert response.status_code == 429
    # Another address may still try.
    response = client.post(
        link.get_absolute_url(), {"password": "open sesame"}, REMOTE_ADDR="10.1.2.3"
    )
    assert response.status_code == 302


def test_it_limits_wrong_passwords_per_link_from_any_address(client, alice, image, settings):
    settings.RATELIMIT_SHARE_PASSWORD_LINK = "4/m"
    link = ShareLink(image=image)
    link.set_password("open sesame")
    link.save()
    for i in range(4):
        client.post(link.get_absolute_url(), {"password": "guess"}, REMOTE_ADDR=f"10.0.0.{i}")
    response = client.post(
        link.get_absolute_url(), {"password": "open sesame"}, REMOTE_ADDR="10.9.9.9"
    )
    assert response.status_code == 429
    other = ShareLink(image=image)
    other.set_password("open sesame")
    other.save()
    response = client.post(other.get_absolute_url(), {"password": "open sesame"})
    assert response.status_code == 302


def test_it_refuses_an_empty_password_with_a_message(client, alice, image):
    link = ShareLink(image=image)
    link.set_password("open sesame")
    link.save()
    response = client.post(link.get_absolute_url(), {"password": ""})
    assert "Type the password you were given" in response.content.decode()


def test_it_offers_no_original_when_downloads_are_off(client, alice, kind):
    link, file_url = make_link(client, alice, kind, preview_only="on")
    assert not link.allow_download
    html = client.get(link.get_absolute_url()).content.decode()
    assert "Download" not in html and "download=1" not in html
    assert meta(html, "og:image:type") == "image/webp"
    assert "og:image:width" not in html
    response = client.get(file_url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/webp"
    assert b"".join(response.streaming_content)[8:12] == b"WEBP"
    refused = client.get(file_url + "?download=1")
    assert refused.status_code == 403
    assert "does not offer downloads" in refused.content.decode()


def test_it_offers_the_original_for_download_by_default(client, alice, kind):
    link, file_url = make_link(client, alice, kind)
    assert link.allow_download
    response = client.get(file_url + "?download=1")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"].startswith("attachment")
    # The page offers it: the image's page one button, an album each image (its tile, and the
    # viewer through data-download).
    html = client.get(link.get_absolute_url()).content.decode()
    assert f'href="{file_url}?download=1"' in html
    if kind == "album":
        assert f'data-download="{file_url}?download=1"' in html
        assert 'aria-label="Download original"' in html


def test_it_ends_a_link_after_its_maximum_views(client, alice, kind):
    link, file_url = make_link(client, alice, kind, max_views="2")
    assert client.get(link.get_absolute_url()).status_code == 200
    assert client.get(link.get_absolute_url()).status_code == 200
    # The page counted last still loads its image.
    assert client.get(file_url).status_code == 200
    assert_gone(client.get(link.get_absolute_url()))
    link.refresh_from_db()
    assert link.view_count == 2 and link.is_used_up and not link.is_active
    client.cookies.clear()
    assert_gone(client.get(file_url))


def test_it_counts_a_last_view_once_however_many_ask_at_once(alice, image):
    link = ShareLink.objects.create(image=image, max_views=1)
    stale = ShareLink.objects.get(pk=link.pk)
    assert link.record_view()
    assert not stale.record_view()
    link.refresh_from_db()
    assert link.view_count == 1


def test_it_counts_no_view_for_a_chat_apps_preview(client, alice, kind):
    link, _ = make_link(client, alice, kind, max_views="1")
    agents = [
        SLACK,
        "Twitterbot/1.0",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "WhatsApp/2.23.20.0",
        "TelegramBot (like TwitterBot)",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    ]
    for agent in agents:
        assert client.get(link.get_absolute_url(), HTTP_USER_AGENT=agent).status_code == 200
    link.refresh_from_db()
    assert link.view_count == 0
    assert client.get(link.get_absolute_url(), HTTP_USER_AGENT=BROWSER).status_code == 200
    assert_gone(client.get(link.get_absolute_url(), HTTP_USER_AGENT=SLACK))


def test_it_shows_the_note_to_the_owner_only(client, alice, kind):
    link, _ = make_link(client, alice, kind, note="for grandma")
    assert link.note == "for grandma"
    assert "for grandma" not in client.get(link.get_absolute_url()).content.decode()
    client.force_login(alice)
    assert "for grandma" in client.get(reverse("gallery:shares")).content.decode()


def test_it_refuses_a_maximum_of_no_views_with_a_message(client, alice, image):
    client.force_login(alice)
    response = client.post(
        reverse("gallery:share_create", args=[image.pk]), {"max_views": "0"}, follow=True
    )
    assert "A link needs at least 1 view" in response.content.decode()
    assert not ShareLink.objects.exists()


def edit(client, link: ShareLink, htmx: bool = False, **data):
    data.setdefault("expires_in_hours", "keep")
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(reverse("gallery:share_edit", args=[link.pk]), data, headers=headers)


def test_it_edits_a_links_options(client, alice, kind):
    link, file_url = make_link(client, alice, kind, expires_in_hours="24")
    expires_at = link.expires_at
    client.force_login(alice)
    response = edit(
        client, link, show_prompt="on", preview_only="on", max_views="5", note="n", password="pw"
    )
    assert response.status_code == 302
    link.refresh_from_db()
    assert (link.show_prompt, link.allow_download, link.max_views, link.note) == (
        True,
        False,
        5,
        "n",
    )
    assert link.check_password("pw") and link.expires_at == expires_at
    # A new password replaces it; an empty one keeps it; removing it opens the link.
    edit(client, link, password="new")
    link.refresh_from_db()
    assert link.check_password("new") and link.allow_download and link.max_views is None
    edit(client, link)
    link.refresh_from_db()
    assert link.check_password("new")
    edit(client, link, remove_password="on", expires_in_hours="")
    link.refresh_from_db()
    assert not link.has_password and link.expires_at is None
    client.logout()
    assert client.get(file_url).status_code == 200


def test_it_edits_a_links_options_with_htmx(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    response = edit(client, link, note="for the baker", htmx=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<details class="link-options" id="options-{link.pk}" open>')
    assert "Saved." in html and 'value="for the baker"' in html
    # The link's summary beside the form follows, out of band.
    summary = f'<span id="summary-{link.pk}" class="link-summary" hx-swap-oob="true">'
    assert summary + 'no prompt<span class="link-note">for the baker</span></span>' in html
    response = edit(client, link, password="a", remove_password="on", htmx=True)
    assert "Type a new password or remove it, not both." in response.content.decode()
    link.refresh_from_db()
    assert not link.has_password


def test_it_says_why_an_edit_is_refused(client, alice, image):
    client.force_login(alice)
    link = share(client, image)
    response = edit(client, link, max_views="-3")
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "The options are not saved: A link needs at least 1 view" in page


def test_it_checks_ownership_of_a_links_options(client, alice, bob, kind):
    link, _ = make_link(client, alice, kind)
    client.force_login(bob)
    assert edit(client, link, note="mine").status_code == 404
    link.refresh_from_db()
    assert link.note == ""


def test_it_sends_a_links_views_and_expiry_again_after_an_htmx_edit(client, alice, image):
    client.force_login(alice)
    link = share(client, image, max_views="3")
    ShareLink.objects.filter(pk=link.pk).update(view_count=2)
    response = edit(client, link, max_views="9", expires_in_hours="24", htmx=True)
    html = response.content.decode()
    # The "N views of M" and the expiry beside the form were drawn before the edit: they
    # follow, out of band, with the new values.
    views = f'<span id="views-{link.pk}" class="link-views" hx-swap-oob="true">'
    assert views + '2<span class="link-views-word"> views</span> of 9</span>' in html
    expiry = f'<span id="expiry-{link.pk}" class="link-expiry" hx-swap-oob="true">'
    assert expiry + "Expires in 23\xa0hours, 59\xa0minutes</span>" in html


def test_it_draws_a_links_views_and_expiry_where_an_edit_finds_them(client, alice, image):
    client.force_login(alice)
    link = share(client, image, max_views="3")
    for page in (image.generation.get_absolute_url(), reverse("gallery:shares")):
        html = client.get(page).content.decode()
        assert f'<span id="views-{link.pk}" class="link-views">0<span' in html
        assert f'<span id="expiry-{link.pk}" class="link-expiry">Never expires</span>' in html
