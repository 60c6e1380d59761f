"""The zip export: the whole gallery, a selection or a collection, streamed as it is built, with a
manifest.json that matches the zip's files and the database."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import tracemalloc
import zipfile
from datetime import timedelta

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage

from accounts.models import Preferences
from gallery import export, views
from gallery.models import Collection, Generation, Image
from tests.factories import done_generation, make_entry, many_done_images

EXPORT = reverse("gallery:export")


def streamed_to_disk(response) -> tuple[zipfile.ZipFile, int]:
    """The zip as a file on disk (so that this test holds none of it in memory), and the
    peak of memory the stream took while it was made, in bytes."""
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/zip"
    out = tempfile.TemporaryFile()  # noqa: SIM115 (the ZipFile returned reads from it)
    tracemalloc.start()
    try:
        for chunk in response.streaming_content:
            out.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out.seek(0)
    return zipfile.ZipFile(out), peak


def hang_up(response) -> None:
    """Close a response before it was read to the end, as a WSGI server does when the client
    goes away; without closing the test's database connection, as the test client does."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def manifest(archive: zipfile.ZipFile) -> dict:
    return json.loads(archive.read("manifest.json"))


# About 20 s on a quiet machine, three times that on a loaded one: the suite's 180 s cut it
# off under a load average of 30.
@pytest.mark.timeout(600)
def test_it_exports_2000_images_with_a_manifest_that_matches_the_zip_and_the_database(
    client, alice
):
    many_done_images(alice, 2000)
    client.force_login(alice)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(EXPORT)
        archive, peak = streamed_to_disk(response)
    day = timezone.localdate().isoformat()
    assert response["Content-Disposition"] == f'attachment; filename="banana-gallery-{day}.zip"'

    about = manifest(archive)
    assert about["count"] == 2000
    assert about["user"] == "alice"
    assert about["provenance_in_files"] is True
    entries = {entry["file"]: entry for entry in about["images"]}
    # Every file in the zip has an entry and every entry a file; the manifest is last.
    assert archive.namelist()[-1] == "manifest.json"
    assert set(archive.namelist()) == {*entries, "manifest.json"}
    assert archive.testzip() is None

    rows = Image.objects.owned_by(alice).select_related("generation").in_bulk()
    assert {entry["image_id"] for entry in entries.values()} == set(rows)
    total = 0
    for name, entry in entries.items():
        data = archive.read(name)
        total += len(data)
        row = rows[entry["image_id"]]
        generation = row.generation
        assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert (entry["original_bytes"], entry["original_sha256"]) == (row.bytes, row.sha256)
        with row.file.open("rb") as fp:
            assert hashlib.sha256(fp.read()).hexdigest() == row.sha256  # stored untouched
        assert entry["prompt"] == generation.prompt
        assert entry["task_id"] == generation.task_id
        assert entry["settings"]["resolution"] == generation.resolution
        assert entry["timings"] == {"waiting": 4.0, "rendering": 6.0, "total": 10.0}
        assert entry["collections"] == []
        assert name == f"{generation.created_at.date().isoformat()}_{name.split('_', 1)[1]}"
        assert name.endswith(f"_{row.pk}.png")
    with PILImage.open(io.BytesIO(archive.read(name))) as picture:
        assert picture.text["Description"] == generation.prompt

    # One query per chunk of images (and one to find there are no more), not one per image;
    # the rest are the session, the preference, the check for images and the export's lease.
    assert len(queries) <= 2000 / export.CHUNK + 1 + 12, len(queries)
    # Streamed: the peak is a fraction of the zip, which never sat in memory whole.
    assert total > 25_000_000
    assert peak < 6_000_000, peak


def test_it_names_files_readably_and_uniquely(alice):
    generation = done_generation(alice, "A red fox, at dawn!", images=2)
    names = {export.file_name(image) for image in generation.images.all()}
    day = timezone.localdate(generation.created_at).isoformat()
    assert names == {f"{day}_a-red-fox-at-dawn_{image.pk}.png" for image in generation.images.all()}
    assert export.file_name(done_generation(alice, "🍌").images.get()).split("_")[1] == "image"


def test_it_exports_the_originals_byte_for_byte_when_the_owner_turned_provenance_off(client, alice):
    Preferences.objects.create(user=alice, file_provenance=False)
    done_generation(alice, "a fox", output_format="jpg")
    done_generation(alice, "an owl")
    client.force_login(alice)
    archive, _ = streamed_to_disk(client.get(EXPORT))
    about = manifest(archive)
    assert about["provenance_in_files"] is False
    for entry in about["images"]:
        data = archive.read(entry["file"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] == entry["original_sha256"]


def test_it_exports_a_selection_with_its_cost(client, alice, bob):
    fox = done_generation(alice, "a fox", output_format="jpg")
    owl = done_generation(alice, "an owl", images=2)
    done_generation(alice, "not selected")
    theirs = done_generation(bob, "bob's")
    pending = Generation.objects.create(owner=alice, prompt="still at the provider")
    accepted = timezone.now() - timedelta(minutes=5)
    make_entry(alice, accepted, credits=2, outcome="failed", generation=owl)
    make_entry(alice, accepted + timedelta(minutes=1), credits=2, generation=owl)
    client.force_login(alice)
    response = client.post(
        reverse("gallery:bulk"),
        {"action": "export", "ids": [fox.pk, owl.pk, theirs.pk, pending.pk]},
    )
    archive, _ = streamed_to_disk(response)
    assert "banana-gallery-selection-" in response["Content-Disposition"]
    entries = manifest(archive)["images"]
    assert sorted(entry["prompt"] for entry in entries) == ["a fox", "an owl", "an owl"]
    cost = {entry["prompt"]: entry["cost"] for entry in entries}
    assert cost["an owl"] == {"credits": 4, "money": None, "currency": ""}  # both tries
    assert cost["a fox"] is None  # no ledger entry: made before the ledger
    fox_file = next(entry["file"] for entry in entries if entry["prompt"] == "a fox")
    with PILImage.open(io.BytesIO(archive.read(fox_file))) as picture:
        assert picture.format == "JPEG"
        assert picture.getexif()[0x010E] == "a fox"


def test_it_runs_one_export_at_a_time_per_user(client, rf, alice, bob):
    done_generation(alice)
    done_generation(bob)
    # The first straight from the view, as a WSGI server gets it (the test client would
    # close it on its own terms).
    request = rf.get(EXPORT)
    request.user = alice
    first = views.export_all(request)
    next(iter(first.streaming_content))  # under way: the client has not read it all yet
    client.force_login(alice)
    second = client.get(EXPORT)
    assert second.status_code == 302
    assert second["Location"] == reverse("accounts:account")
    page = client.get(second["Location"]).content.decode()
    assert "Your previous export is still being downloaded." in page

    # Others are not held up; a download that stops (the client went away) lets go, and so
    # does one read to the end.
    client.force_login(bob)
    streamed_to_disk(client.get(EXPORT))
    hang_up(first)
    client.force_login(alice)
    streamed_to_disk(client.get(EXPORT))
    streamed_to_disk(client.get(EXPORT))


def test_it_says_so_when_there_is_nothing_to_export(client, alice):
    Generation.objects.create(owner=alice, prompt="still at the provider")
    client.force_login(alice)
    response = client.get(EXPORT, follow=True)
    assert "Your gallery has no finished images yet" in response.content.decode()
    response = client.post(reverse("gallery:bulk"), {"action": "export", "ids": []}, follow=True)
    assert "Select at least one image first." in response.content.decode()


def test_it_checks_ownership(client, alice, bob):
    mine = done_generation(alice, "alice's")
    client.force_login(bob)
    response = client.post(reverse("gallery:bulk"), {"action": "export", "ids": [mine.pk]})
    assert response.status_code == 302
    done_generation(bob, "bob's")
    archive, _ = streamed_to_disk(client.get(EXPORT))
    assert [entry["prompt"] for entry in manifest(archive)["images"]] == ["bob's"]


def test_it_needs_a_login(client, db):
    response = client.get(EXPORT)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


# A collection's export, and the collections each image is in


def test_it_exports_a_collection_with_the_collections_each_image_is_in(client, alice, bob):
    trips = Collection.objects.create(owner=alice, name="Trips")
    birds = Collection.objects.create(owner=alice, name="birds")
    Collection.objects.create(owner=alice, name="Empty")
    owl = done_generation(alice, "an owl", images=2)
    fox = done_generation(alice, "a fox", output_format="jpg")
    done_generation(alice, "not in it")
    Generation.objects.create(owner=alice, prompt="still at the provider")
    trips.add(Generation.objects.filter(owner=alice))
    trips.remove(Generation.objects.filter(prompt="not in it"))
    birds.add(Generation.objects.filter(pk=owl.pk))
    # Someone else's collection of the same name holds none of hers.
    theirs = Collection.objects.create(owner=bob, name="Trips")
    theirs.add(Generation.objects.filter(pk=done_generation(bob, "bob's").pk))
    client.force_login(alice)
    page = client.get(trips.get_absolute_url()).content.decode()
    url = reverse("gallery:collection_export", args=[trips.pk])
    assert f'href="{url}"' in page

    response = client.get(url)
    archive, _ = streamed_to_disk(response)
    day = timezone.localdate().isoformat()
    assert response["Content-Disposition"] == (
        f'attachment; filename="banana-gallery-trips-{day}.zip"'
    )
    about = manifest(archive)
    assert about["collection"] == {"id": trips.pk, "name": "Trips"}
    assert about["user"] == "alice" and about["count"] == 3
    entries = {entry["file"]: entry for entry in about["images"]}
    assert set(archive.namelist()) == {*entries, "manifest.json"}
    rows = Image.objects.filter(generation__in=[owl, fox]).select_related("generation").in_bulk()
    assert {entry["image_id"] for entry in entries.values()} == set(rows)
    for name, entry in entries.items():
        data = archive.read(name)
        assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        row = rows[entry["image_id"]]
        assert name == export.file_name(row)
        assert (entry["generation_id"], entry["prompt"]) == (
            row.generation_id,
            row.generation.prompt,
        )
        assert entry["original_sha256"] == row.sha256
    collections = {entry["prompt"]: entry["collections"] for entry in entries.values()}
    assert collections == {"an owl": ["birds", "Trips"], "a fox": ["Trips"]}


def test_it_names_the_collections_in_every_export(client, alice):
    trips = Collection.objects.create(owner=alice, name="Trips")
    fox = done_generation(alice, "a fox")
    done_generation(alice, "an owl")
    trips.add(Generation.objects.filter(pk=fox.pk))
    client.force_login(alice)
    selection = {"action": "export", "ids": [fox.pk]}
    # One after the other: an export holds the next one off until it is read to the end.
    for request in [
        lambda: client.get(EXPORT),
        lambda: client.post(reverse("gallery:bulk"), selection),
    ]:
        archive, _ = streamed_to_disk(request())
        about = manifest(archive)
        assert "collection" not in about
        collections = {entry["prompt"]: entry["collections"] for entry in about["images"]}
        assert collections["a fox"] == ["Trips"]
        assert collections.get("an owl", []) == []


def test_it_exports_a_collection_in_queries_that_do_not_grow_per_image(client, alice):
    trips = Collection.objects.create(owner=alice, name="Trips")
    birds = Collection.objects.create(owner=alice, name="Birds")
    client.force_login(alice)
    url = reverse("gallery:collection_export", args=[trips.pk])

    def queries() -> tuple[int, dict]:
        trips.add(Generation.objects.all())
        birds.add(Generation.objects.all())
        with CaptureQueriesContext(connection) as captured:
            archive, _ = streamed_to_disk(client.get(url))
        return len(captured), manifest(archive)

    many_done_images(alice, 2)
    queries()  # the first export writes the export lease's row, the next ones update it
    few, about = queries()
    assert about["count"] == 2
    many_done_images(alice, 30)
    many, about = queries()
    assert about["count"] == 32
    assert all(entry["collections"] == ["Birds", "Trips"] for entry in about["images"])
    assert many == few


def test_it_checks_ownership_of_a_collection_export(client, alice, bob):
    trips = Collection.objects.create(owner=alice, name="Trips")
    trips.add(Generation.objects.filter(pk=done_generation(alice).pk))
    client.force_login(bob)
    response = client.get(reverse("gallery:collection_export", args=[trips.pk]))
    assert response.status_code == 404
    assert not response.streaming


def test_it_says_so_when_a_collection_has_nothing_to_export(client, alice):
    trips = Collection.objects.create(owner=alice, name="Trips")
    trips.add(Generation.objects.filter(pk=Generation.objects.create(owner=alice, prompt="p").pk))
    client.force_login(alice)
    response = client.get(reverse("gallery:collection_export", args=[trips.pk]), follow=True)
    assert response.redirect_chain == [(trips.get_absolute_url(), 302)]
    assert "“Trips” has no finished images yet" in response.content.decode()


def test_it_runs_a_collection_export_one_at_a_time(client, rf, alice):
    trips = Collection.objects.create(owner=alice, name="🍌")
    trips.add(Generation.objects.filter(pk=done_generation(alice).pk))
    url = reverse("gallery:collection_export", args=[trips.pk])
    request = rf.get(EXPORT)
    request.user = alice
    first = views.export_all(request)
    next(iter(first.streaming_content))
    client.force_login(alice)
    response = client.get(url, follow=True)
    assert response.redirect_chain == [(trips.get_absolute_url(), 302)]
    assert "Your previous export is still being downloaded." in response.content.decode()
    hang_up(first)
    response = client.get(url)
    assert f"banana-gallery-collection-{trips.pk}-" in response["Content-Disposition"]
    streamed_to_disk(response)
