"""Collections: named sets of a user's generations, managed from the select bar, the viewer's
panel and the detail page; their pages reuse the gallery's grid, filters and paging."""

from __future__ import annotations

import pytest
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gallery.forms import CollectionForm
from gallery.models import Collection, CollectionItem, Generation, Image, ShareLink
from gallery.views import PAGE_SIZE
from tests.factories import done_generation, make_generation

HTMX = {"HX-Request": "true"}


@pytest.fixture
def trips(alice) -> Collection:
    return Collection.objects.create(owner=alice, name="Trips")


@pytest.fixture
def pictures(alice) -> list[Generation]:
    return [done_generation(alice, f"picture {i}") for i in range(3)]


def add(client, ids, headers=None, **data):
    return client.post(reverse("gallery:collection_add"), {"ids": ids, **data}, headers=headers)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


# The models


def test_it_keeps_names_unique_per_owner_whatever_the_case(alice, bob, trips):
    with pytest.raises(IntegrityError), transaction.atomic():
        Collection.objects.create(owner=alice, name="tRIPS")
    assert Collection.objects.create(owner=bob, name="Trips")  # another owner's is another


def test_it_puts_one_generation_in_several_collections(alice, trips, pictures):
    birds = Collection.objects.create(owner=alice, name="Birds")
    one = Generation.objects.filter(pk=pictures[0].pk)
    assert trips.add(one) == 1
    assert birds.add(one) == 1
    assert trips.add(one) == 0  # once in a collection is enough
    assert set(pictures[0].collections.all()) == {trips, birds}
    with pytest.raises(IntegrityError), transaction.atomic():
        CollectionItem.objects.create(collection=trips, generation=pictures[0])


def test_it_leaves_out_generations_of_other_owners(alice, bob, trips):
    theirs = done_generation(bob, "bob's")
    assert trips.add(Generation.objects.filter(pk=theirs.pk)) == 0
    assert not trips.items.exists()


def test_it_forgets_a_deleted_generation(client, alice, trips, pictures):
    trips.add(Generation.objects.all())
    client.force_login(alice)
    client.post(reverse("gallery:delete", args=[pictures[0].pk]))
    assert set(trips.gallery()) == set(pictures[1:])


# The list of collections


def test_it_makes_a_collection_by_name(client, alice):
    client.force_login(alice)
    response = client.post(reverse("gallery:collections"), {"name": "  Cats  "})
    collection = Collection.objects.get()
    assert response.status_code == 302
    assert response["Location"] == collection.get_absolute_url()
    assert collection.name == "Cats" and collection.owner == alice


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "Name the collection."),
        ("trips", "You already have a collection named “trips”."),
        ("x" * 101, "A collection&#x27;s name is at most 100 characters long (this one has 101)."),
    ],
)
def test_it_refuses_a_bad_name_and_keeps_it(client, alice, trips, name, error):
    client.force_login(alice)
    response = client.post(reverse("gallery:collections"), {"name": name})
    assert response.status_code == 400
    html = response.content.decode()
    assert error in html
    assert f'value="{name}"' in html  # nothing typed is lost
    assert Collection.objects.count() == 1


def test_it_says_a_name_was_taken_while_the_form_was_checked(alice, trips):
    """Two tabs (or a script and a tab) make the same name at once: both pass the form's check,
    and the second to write gets the form's message instead of the database's error."""
    form = CollectionForm({"name": "Birds"}, owner=alice)
    assert form.is_valid()
    Collection.objects.create(owner=alice, name="BIRDS")
    assert form.save_unique() is None
    assert form.errors["name"] == ["You already have a collection named “Birds”."]
    Collection.objects.filter(name="BIRDS").delete()
    renamed = CollectionForm({"name": "birds"}, instance=trips, owner=alice)
    assert renamed.is_valid()
    Collection.objects.create(owner=alice, name="Birds")
    assert renamed.save_unique() is None and "name" in renamed.errors
    assert set(Collection.objects.values_list("name", flat=True)) == {"Birds", "Trips"}


def test_it_lists_collections_with_counts_and_covers(client, alice, trips, pictures):
    Collection.objects.create(owner=alice, name="Empty one")
    trips.add(Generation.objects.filter(pk__in=[pictures[0].pk, pictures[1].pk]))
    # The cover is the image added last that is finished.
    CollectionItem.objects.create(collection=trips, generation=make_generation(alice, "failed"))
    CollectionItem.objects.filter(generation=pictures[1]).update(added_at="2030-01-01T00:00Z")
    client.force_login(alice)
    html = client.get(reverse("gallery:collections")).content.decode()
    assert "Trips" in html and "3 images" in html
    assert "Empty one" in html and "0 images" in html
    assert pictures[1].images.get().thumbnail_url in html
    assert pictures[0].images.get().thumbnail_url not in html


def test_it_has_a_constant_number_of_queries_for_the_list(client, alice):
    client.force_login(alice)
    client.get(reverse("gallery:collections"))

    def grow(to: int) -> None:
        for i in range(Collection.objects.count(), to):
            collection = Collection.objects.create(owner=alice, name=f"Set {i}")
            collection.add(Generation.objects.filter(pk=done_generation(alice, f"g{i}").pk))

    grow(10)
    with CaptureQueriesContext(connection) as few:
        assert client.get(reverse("gallery:collections")).status_code == 200
    grow(50)
    with CaptureQueriesContext(connection) as many:
        response = client.get(reverse("gallery:collections"))
    assert response.content.decode().count('class="collection-card"') == 50
    assert len(many) == len(few)


# A collection's page


def test_it_shows_only_the_collections_images(client, alice, trips, pictures):
    trips.add(Generation.objects.filter(pk__in=[pictures[0].pk, pictures[2].pk]))
    client.force_login(alice)
    response = client.get(trips.get_absolute_url())
    html = response.content.decode()
    assert f'id="card-{pictures[0].pk}"' in html and f'id="card-{pictures[2].pk}"' in html
    assert f'id="card-{pictures[1].pk}"' not in html
    assert "<strong>2</strong> in all" in html
    # The grid's select bar can take them out again.
    assert reverse("gallery:collection_remove", args=[trips.pk]) in html


def test_it_filters_and_pages_a_collection_like_the_gallery(client, alice, trips):
    made = [make_generation(alice, f"cat {i}", is_favorite=i % 2 == 0) for i in range(30)]
    trips.add(Generation.objects.all())
    client.force_login(alice)
    response = client.get(trips.get_absolute_url(), {"favorites": "on"})
    assert [g.pk for g in response.context["generations"]] == [g.pk for g in made[-2::-2]]
    assert "<strong>15</strong> of 30 shown" in response.content.decode()

    response = client.get(trips.get_absolute_url())
    assert len(response.context["generations"]) == PAGE_SIZE
    next_url = response.context["next_url"]
    assert next_url == f"?before={made[-PAGE_SIZE].pk}"
    page = client.get(trips.get_absolute_url() + next_url, headers=HTMX).content.decode()
    assert page.count('<article id="card-') == 30 - PAGE_SIZE


def test_it_shows_an_empty_collection_with_what_to_do(client, alice, trips):
    client.force_login(alice)
    html = client.get(trips.get_absolute_url()).content.decode()
    assert "This collection is empty" in html


def test_it_counts_a_favourite_on_a_collections_page_in_its_counters(
    client, alice, trips, pictures
):
    trips.add(Generation.objects.filter(pk=pictures[0].pk))
    client.force_login(alice)
    url = reverse("gallery:favorite", args=[pictures[0].pk])
    html = client.post(url, {"favorite": "1", "collection": trips.pk}, headers=HTMX).content
    # One of one in the collection, not the three of the gallery.
    assert b"<strong>1</strong> in all" in html and b"<strong>1</strong> favourite" in html
    assert f'name="collection" value="{trips.pk}"'.encode() in html


def test_it_has_a_constant_number_of_queries_per_collection_page(client, alice, trips):
    client.force_login(alice)
    client.get(trips.get_absolute_url())

    def grow(to: int) -> None:
        for i in range(trips.items.count(), to):
            trips.add(Generation.objects.filter(pk=done_generation(alice, f"g{i}").pk))

    grow(10)
    with CaptureQueriesContext(connection) as few:
        assert client.get(trips.get_absolute_url()).status_code == 200
    grow(50)
    with CaptureQueriesContext(connection) as many:
        response = client.get(trips.get_absolute_url())
    assert len(response.context["generations"]) == PAGE_SIZE
    assert len(many) == len(few)


def test_it_renames_a_collection(client, alice, trips):
    Collection.objects.create(owner=alice, name="Birds")
    client.force_login(alice)
    url = reverse("gallery:collection_edit", args=[trips.pk])
    response = client.post(url, {"name": "BIRDS"})
    assert response.status_code == 400
    assert "You already have a collection named “BIRDS”." in response.content.decode()
    response = client.post(url, {"name": "Summer trips", "description": "Sea and sun"})
    assert response.status_code == 302
    trips.refresh_from_db()
    assert (trips.name, trips.description) == ("Summer trips", "Sea and sun")
    # Its own name in another case is not a clash.
    assert client.post(url, {"name": "summer trips"}).status_code == 302


def test_it_deletes_a_collection_and_never_its_images(client, alice, trips, pictures):
    trips.add(Generation.objects.all())
    link = ShareLink.objects.create(collection=trips)
    files = [image.file.name for image in Image.objects.all()]
    client.force_login(alice)
    url = reverse("gallery:collection_delete", args=[trips.pk])
    assert "Its 3 images stay in your gallery." in client.get(url).content.decode()
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("gallery:collections")
    assert not Collection.objects.exists()
    assert not ShareLink.objects.filter(pk=link.pk).exists()  # the album link goes with it
    assert Generation.objects.count() == 3 and Image.objects.count() == 3
    assert all(default_storage.exists(name) for name in files)


# The select bar


def test_it_adds_the_selection_to_a_collection(client, alice, trips, pictures):
    client.force_login(alice)
    trips.add(Generation.objects.filter(pk=pictures[0].pk))
    response = add(client, [g.pk for g in pictures], collection=trips.pk, next="/?q=picture")
    assert response.status_code == 302
    assert response["Location"] == "/?q=picture"  # back to the gallery as it was
    assert messages_of(response) == ["Added 2 images to “Trips”. 1 was in it already."]
    assert set(trips.gallery()) == set(pictures)


def test_it_adds_the_selection_to_a_new_collection_by_name(client, alice, trips, pictures):
    client.force_login(alice)
    response = add(client, [pictures[0].pk], new_collection="Birds")
    assert messages_of(response) == ["Added 1 image to “Birds”."]
    birds = Collection.objects.get(name="Birds")
    assert list(birds.gallery()) == [pictures[0]]
    # A name that exists, in any case, is that collection.
    add(client, [pictures[1].pk], new_collection="  trips ")
    assert Collection.objects.count() == 2
    assert list(trips.gallery()) == [pictures[1]]


def test_it_adds_without_a_reload_and_offers_the_new_collection(client, alice, pictures):
    client.force_login(alice)
    response = add(client, [pictures[0].pk], new_collection="Birds", headers=HTMX)
    html = response.content.decode()
    birds = Collection.objects.get()
    assert 'id="bulk-status"' in html and "Added 1 image to “Birds”." in html
    assert f'<option value="{birds.pk}" selected>Birds</option>' in html
    assert 'hx-swap-oob="true"' in html


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"collection": "1"}, "Select at least one image first."),
        ({"ids": "PICK"}, "Choose a collection, or name a new one."),
        ({"ids": "PICK", "collection": "999999"}, "That collection no longer exists."),
        ({"ids": "PICK", "new_collection": "x" * 101}, "is at most 100 characters long"),
    ],
)
def test_it_explains_what_is_missing_to_add(client, alice, pictures, data, error):
    client.force_login(alice)
    data = {k: pictures[0].pk if v == "PICK" else v for k, v in data.items()}
    url = reverse("gallery:collection_add")
    response = client.post(url, {**data, "next": "/?q=picture"})
    assert response["Location"] == "/?q=picture"
    assert any(error in m for m in messages_of(response)), messages_of(response)
    html = client.post(url, data, headers=HTMX).content.decode()
    assert "bulk-status--error" in html and error.replace("'", "&#x27;") in html
    assert not CollectionItem.objects.exists()


def test_it_takes_the_selection_out_of_a_collection(client, alice, trips, pictures):
    trips.add(Generation.objects.all())
    client.force_login(alice)
    url = reverse("gallery:collection_remove", args=[trips.pk])
    response = client.post(url, {"ids": [pictures[0].pk]})
    assert response["Location"] == trips.get_absolute_url()
    assert messages_of(response) == ["Took 1 image out of “Trips”; it stays in your gallery."]
    html = client.post(url, {"ids": [pictures[1].pk]}, headers=HTMX).content.decode()
    assert f'<div id="card-{pictures[1].pk}" hx-swap-oob="delete">' in html
    assert "<strong>1</strong> in all" in html
    assert list(trips.gallery()) == [pictures[2]]
    assert Generation.objects.count() == 3


# One image's collections: the detail page and the viewer's panel


def test_it_shows_an_images_collections_on_its_detail_page(client, alice, trips, pictures):
    trips.add(Generation.objects.filter(pk=pictures[0].pk))
    Collection.objects.create(owner=alice, name="Birds")
    client.force_login(alice)
    html = client.get(pictures[0].get_absolute_url()).content.decode()
    picker = reverse("gallery:generation_collections", args=[pictures[0].pk])
    assert f'hx-post="{picker}"' in html and f'action="{picker}"' in html
    assert html.count('aria-pressed="true"') == 1  # in Trips, not in Birds
    assert 'title="Take it out of “Trips”"' in html and 'title="Add it to “Birds”"' in html


def test_it_adds_and_removes_one_image_with_plain_forms(client, alice, trips, pictures):
    client.force_login(alice)
    url = reverse("gallery:generation_collections", args=[pictures[0].pk])
    assert "Collections of this image" in client.get(url).content.decode()
    response = client.post(url, {"collection": trips.pk})
    assert response["Location"] == pictures[0].get_absolute_url()
    assert messages_of(response) == ["In “Trips”."]
    assert list(trips.gallery()) == [pictures[0]]
    client.post(url, {"collection": trips.pk, "remove": "1"})
    assert not trips.items.exists()


def test_it_adds_and_removes_one_image_in_the_viewers_panel(client, alice, trips, pictures):
    client.force_login(alice)
    url = reverse("gallery:generation_collections", args=[pictures[0].pk])
    html = client.get(url, headers=HTMX).content.decode()
    assert html.lstrip().startswith(f'<div class="picker" id="picker-{pictures[0].pk}">')
    html = client.post(url, {"new_collection": "Birds"}, headers=HTMX).content.decode()
    assert "In “Birds”." in html and 'aria-pressed="true"' in html
    birds = Collection.objects.get(name="Birds")
    html = client.post(url, {"collection": birds.pk, "remove": "1"}, headers=HTMX).content
    assert "Taken out of “Birds”.".encode() in html
    assert not birds.items.exists()
    html = client.post(url, {"new_collection": ""}, headers=HTMX).content.decode()
    assert "Choose a collection, or name a new one." in html


def test_it_takes_the_tile_off_the_collections_page_when_the_viewer_takes_it_out(
    client, alice, trips, pictures
):
    trips.add(Generation.objects.all())
    birds = Collection.objects.create(owner=alice, name="Birds")
    birds.add(Generation.objects.filter(pk=pictures[0].pk))
    client.force_login(alice)
    url = reverse("gallery:generation_collections", args=[pictures[0].pk])
    # The viewer over Trips' page says so; the panel's forms carry it on.
    html = client.get(url, {"in_collection": trips.pk}, headers=HTMX).content.decode()
    assert html.count(f'<input type="hidden" name="in_collection" value="{trips.pk}">') == 2
    card = f'<div id="card-{pictures[0].pk}" hx-swap-oob="delete"></div>'
    # Out of another collection: the tile stays on Trips' page.
    data = {"collection": birds.pk, "remove": "1", "in_collection": trips.pk}
    html = client.post(url, data, headers=HTMX).content.decode()
    assert "Taken out of “Birds”." in html and card not in html and 'id="counts"' not in html
    # Out of Trips: its tile leaves the grid and the counters follow, out of band.
    data["collection"] = trips.pk
    html = client.post(url, data, headers=HTMX).content.decode()
    assert "Taken out of “Trips”." in html and card in html
    assert '<p class="counts" id="counts"' in html and "<strong>2</strong> in all" in html
    assert list(trips.gallery()) == [pictures[2], pictures[1]]


def test_it_offers_no_adding_to_the_collection_whose_page_it_is(client, alice, trips, pictures):
    birds = Collection.objects.create(owner=alice, name="Birds")
    trips.add(Generation.objects.all())
    client.force_login(alice)
    html = client.get(trips.get_absolute_url()).content.decode()
    start = html.index('<form id="bulk-form"')
    bar = html[start : html.index("</form>", start)]
    assert f'<option value="{birds.pk}">Birds</option>' in bar
    assert f'<option value="{trips.pk}"' not in bar
    remove = reverse("gallery:collection_remove", args=[trips.pk])
    assert f'hx-post="{remove}"' in bar and "Remove from this collection</button>" in bar
    # Its picker sent again after an add leaves it out too; the gallery's offers them all.
    data = {"collection": birds.pk, "in_collection": trips.pk}
    html = add(client, [pictures[0].pk], headers=HTMX, **data).content.decode()
    assert f'<option value="{birds.pk}" selected>Birds</option>' in html
    assert f'<option value="{trips.pk}"' not in html
    html = client.get(reverse("gallery:index")).content.decode()
    assert f'<option value="{trips.pk}">Trips</option>' in html
    assert "Remove from this collection" not in html


# Only the owner


def test_it_checks_ownership(client, alice, bob, trips, pictures):
    trips.add(Generation.objects.filter(pk=pictures[0].pk))
    mine = Collection.objects.create(owner=bob, name="Bob's")
    client.force_login(bob)
    for name in ["gallery:collection", "gallery:collection_edit", "gallery:collection_delete"]:
        assert client.get(reverse(name, args=[trips.pk])).status_code == 404, name
    for name in [
        "gallery:collection_edit",
        "gallery:collection_delete",
        "gallery:collection_remove",
        "gallery:collection_share",
    ]:
        response = client.post(reverse(name, args=[trips.pk]), {"ids": [pictures[0].pk]})
        assert response.status_code == 404, name
    picker = reverse("gallery:generation_collections", args=[pictures[1].pk])
    assert client.get(picker).status_code == 404
    assert client.post(picker, {"collection": mine.pk}).status_code == 404
    # Alice's collection is not a choice for Bob, nor are Alice's images.
    response = add(client, [pictures[1].pk], collection=trips.pk)
    assert messages_of(response) == ["That collection no longer exists."]
    add(client, [pictures[1].pk], collection=mine.pk)
    assert not mine.items.exists()
    assert "Trips" not in client.get(reverse("gallery:collections")).content.decode()
    assert list(trips.gallery()) == [pictures[0]]
    assert Collection.objects.filter(owner=alice).get().name == "Trips"
    assert not ShareLink.objects.exists()
