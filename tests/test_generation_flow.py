"""Generations end to end through the real django-q2 queue, against the simulator over HTTP.

Each provider error of the contract has its own test: the generation ends in the right state
with the right message, and the simulator saw exactly one task per generation.
"""

from __future__ import annotations

import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image as PILImage

from gallery import provider, tasks
from gallery.models import Generation, Image, ProviderAccount
from tests.support import finished, run_queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def generate(user, prompt: str = "a banana on the moon", **settings) -> Generation:
    generation = Generation.objects.create(owner=user, prompt=prompt, **settings)
    tasks.wake_submission()
    return generation


def tasks_for(simulator, generation: Generation) -> list[str]:
    return simulator.simulator.status()["tasksByRequestId"].get(str(generation.request_id), [])


def calls_for(simulator, generation: Generation) -> int:
    return simulator.simulator.status()["createTask"]["byRequestId"].get(
        str(generation.request_id), 0
    )


def test_it_generates_and_stores_the_image(alice, simulator):
    generation = generate(alice, "a red fox in snow", aspect_ratio="16:9", output_format="jpg")
    run_queued_tasks(until=finished(generation))

    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert generation.task_id == tasks_for(simulator, generation)[0]
    assert calls_for(simulator, generation) == 1
    assert generation.submitted_at and generation.provider_created_at
    assert generation.provider_completed_at and generation.finished_at
    assert generation.cost_time_ms is not None

    image = generation.images.get()
    assert (image.width, image.height) == (1376, 768)
    assert image.format == "JPEG"
    data = image.file.read()
    assert image.bytes == len(data)
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    thumb = PILImage.open(io.BytesIO(image.thumbnail.read()))
    assert thumb.format == "WEBP"
    assert max(thumb.size) <= 512


def test_it_stores_every_result_url(alice, simulator):
    generation = generate(alice, "two of them [sim:multi]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert sorted(generation.images.values_list("index", flat=True)) == [0, 1]


@pytest.mark.parametrize("code", ["400", "422", "501", "505"])
def test_it_fails_on_a_refused_request_without_retrying(alice, simulator, code):
    generation = generate(alice, f"refused [sim:{code}]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == code
    assert generation.fail_message  # the provider's own words
    assert calls_for(simulator, generation) == 1
    assert tasks_for(simulator, generation) == []


def test_it_fails_with_the_providers_reason_on_a_fail_result(alice, simulator):
    generation = generate(alice, "not allowed [sim:fail]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "400"
    record_message = generation.fail_message
    assert record_message and "image service could not" not in record_message
    assert len(tasks_for(simulator, generation)) == 1
    assert not generation.images.exists()


def test_it_fails_clearly_when_the_task_vanishes(alice, simulator):
    generation = generate(alice, "vanishing [sim:query404]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "404"
    assert "no longer knows" in generation.fail_message
    assert len(tasks_for(simulator, generation)) == 1


def test_it_keeps_the_generation_queued_on_409_and_submits_later(alice, simulator):
    generation = generate(alice, "busy [sim:409=2]")
    tasks.submit_queued()
    generation.refresh_from_db()
    assert generation.status == Generation.Status.QUEUED
    assert not generation.fail_message
    assert ProviderAccount.get().create_not_before > timezone.now()

    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert calls_for(simulator, generation) == 3
    assert len(tasks_for(simulator, generation)) == 1


def test_it_waits_as_told_on_429_and_never_counts_it(alice, simulator, settings):
    settings.AIGPTIMAGE_RETRY_ATTEMPTS = 1  # a 429 counted as a failure would fail at once
    generation = generate(alice, "too fast [sim:429=2]")
    before = timezone.now()
    tasks.submit_queued()
    generation.refresh_from_db()
    assert generation.status == Generation.Status.QUEUED
    assert generation.attempts == 0
    wait_until = ProviderAccount.get().create_not_before
    assert wait_until is not None
    assert 0.9 <= (wait_until - before).total_seconds() <= 2  # the simulator says retryAfter 1

    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert len(tasks_for(simulator, generation)) == 1


def test_it_retries_a_500_with_the_same_request_id(alice, simulator):
    generation = generate(alice, "flaky [sim:500=2]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert calls_for(simulator, generation) == 3
    assert len(tasks_for(simulator, generation)) == 1


def test_it_retries_maintenance_like_a_500(alice, simulator):
    generation = generate(alice, "down for maintenance [sim:455=1]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert calls_for(simulator, generation) == 2
    assert len(tasks_for(simulator, generation)) == 1


def test_it_fails_clearly_when_500s_outlast_the_budget(alice, simulator, settings):
    settings.AIGPTIMAGE_RETRY_ATTEMPTS = 3
    generation = generate(alice, "down [sim:500]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "500"
    assert "kept failing" in generation.fail_message
    assert calls_for(simulator, generation) == 3
    assert tasks_for(simulator, generation) == []


def test_it_retries_a_broken_answer_with_the_same_request_id(alice, simulator, settings):
    settings.AIGPTIMAGE_RETRY_ATTEMPTS = 2
    generation = generate(alice, "html page [sim:broken]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert calls_for(simulator, generation) == 2


def test_it_survives_500s_while_polling(alice, simulator):
    generation = generate(alice, "flaky polls [sim:query500=2]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert len(tasks_for(simulator, generation)) == 1


@pytest.mark.parametrize(
    ("break_key", "reason", "words"),
    [
        ("401", ProviderAccount.PauseReason.UNAUTHORIZED, "does not accept our access key"),
        ("402", ProviderAccount.PauseReason.NO_CREDITS, "run out of credits"),
    ],
)
def test_it_pauses_all_submission_and_resumes_when_the_key_works(
    alice, bob, client, simulator, break_key, reason, words
):
    sim = simulator.simulator
    if break_key == "401":
        sim.config.api_keys = {"another-key": "basic"}
    else:
        sim.config.credits = 0
    first = generate(alice, "first")
    second = generate(bob, "second")
    tasks.submit_queued()

    account = ProviderAccount.get()
    assert account.pause_reason == reason
    assert account.pause_message
    for generation in (first, second):
        generation.refresh_from_db()
        assert generation.status == Generation.Status.QUEUED
    # One probe went out, then nothing more until the probe interval has passed.
    assert sim.status()["createTask"]["calls"] == 1
    tasks.submit_queued()
    assert sim.status()["createTask"]["calls"] == 1

    client.force_login(bob)
    page = client.get("/").content.decode()
    assert "paused" in page and words in page

    if break_key == "401":
        sim.config.api_keys = {"sim-key": "basic"}
    else:
        sim.config.credits = None
    # The every-minute reconcile probes once the probe interval has passed.
    time.sleep(0.35)
    tasks.reconcile()
    run_queued_tasks(until=finished(first, second))
    assert not ProviderAccount.get().is_paused
    for generation in (first, second):
        generation.refresh_from_db()
        assert generation.status == Generation.Status.DONE
        assert len(tasks_for(simulator, generation)) == 1
    assert "paused" not in client.get("/").content.decode()


def test_it_fails_when_the_result_expired_before_download(alice, simulator):
    generation = generate(alice, "late [sim:expired]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "expired"
    assert "expired" in generation.fail_message


def test_it_retries_a_failed_download_without_generating_again(alice, simulator):
    generation = generate(alice, "saved on the second try")
    run_queued_tasks(until=lambda: Generation.objects.get(pk=generation.pk).images.exists())
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE

    # The file server is unreachable once: the generation is kept and the download tried again.
    generation.images.all().delete()
    Generation.objects.filter(pk=generation.pk).update(status=Generation.Status.DOWNLOADING)
    generation.refresh_from_db()
    good_urls = generation.result_urls
    Generation.objects.filter(pk=generation.pk).update(
        result_urls=["http://127.0.0.1:9/refused.png"]
    )
    tasks.download_images(generation.pk)
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DOWNLOADING
    assert generation.attempts == 1

    Generation.objects.filter(pk=generation.pk).update(result_urls=good_urls, retry_at=None)
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert generation.images.count() == 1
    assert len(tasks_for(simulator, generation)) == 1


def test_it_downloads_once_when_the_task_runs_twice(alice, simulator):
    generation = generate(alice, "twice")
    run_queued_tasks(until=lambda: Generation.objects.get(pk=generation.pk).status == "done")
    Generation.objects.filter(pk=generation.pk).update(status=Generation.Status.DOWNLOADING)
    tasks.download_images(generation.pk)
    tasks.download_images(generation.pk)
    assert Image.objects.filter(generation=generation).count() == 1


def test_it_never_exceeds_the_active_task_limit(alice, bob, simulator, settings):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 3
    simulator.simulator.config.speed = 0.1
    generations = [generate(alice if i % 2 else bob, f"busy {i}") for i in range(9)]
    peak = 0

    def watch() -> bool:
        nonlocal peak
        peak = max(peak, Generation.objects.in_flight().count())
        return finished(*generations)()

    run_queued_tasks(until=watch, seconds=30)
    assert 1 <= peak <= 3
    assert Generation.objects.filter(status="done").count() == 9
    assert simulator.simulator.status()["answers"].get("409", 0) == 0


def test_it_shares_slots_fairly_between_users(alice, bob, settings, simulator):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 2
    for i in range(4):
        Generation.objects.create(owner=alice, prompt=f"alice {i}")
    bobs = Generation.objects.create(owner=bob, prompt="bob's only one")
    now = timezone.now()
    first = Generation.objects.claim_next(now)
    second = Generation.objects.claim_next(now)
    assert first.owner == alice
    assert second == bobs
    assert Generation.objects.claim_next(now) is None


def test_it_never_claims_more_slots_from_parallel_workers(alice, settings, simulator):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 2
    for i in range(10):
        Generation.objects.create(owner=alice, prompt=f"race {i}")
    now = timezone.now()
    with ThreadPoolExecutor(6) as pool:
        claimed = list(pool.map(lambda _: Generation.objects.claim_next(now), range(6)))
    assert len([c for c in claimed if c is not None]) == 2
    assert Generation.objects.in_flight().count() == 2


def test_it_reconciles_a_submission_whose_worker_died(alice, simulator, settings):
    generation = Generation.objects.create(owner=alice, prompt="orphaned")
    claimed = Generation.objects.claim_next(timezone.now())
    assert claimed == generation
    # The worker sent createTask and died before writing the answer down.
    client = provider.get_client()
    task_id = client.create_task(generation.prompt, request_id=str(generation.request_id))
    Generation.objects.filter(pk=generation.pk).update(
        submitted_at=timezone.now() - timedelta(hours=1)
    )
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert generation.task_id == task_id
    assert tasks_for(simulator, generation) == [task_id]


def test_it_restarts_a_dropped_sweep(alice, simulator):
    generation = generate(alice, "sweep lost")
    tasks.submit_queued()
    # The sweep's queue message is lost (Redis broker crash, say).
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    tasks.reconcile()
    assert OrmQ.objects.exists()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE


def test_it_runs_one_sweep_at_a_time(db):
    account = ProviderAccount.get()
    token = account.take_sweep_lease(30)
    assert token
    assert account.take_sweep_lease(30) is None
    assert account.renew_sweep_lease(token, 30)
    account.release_sweep_lease(token)
    assert account.take_sweep_lease(30)


def test_it_takes_over_from_a_sweep_that_died(alice, simulator):
    account = ProviderAccount.get()
    dead = account.take_sweep_lease(30)
    generation = generate(alice, "after a crash")
    tasks.submit_queued()
    tasks.poll_sweep()  # the lease is held: this sweep leaves at once
    assert Generation.objects.get(pk=generation.pk).poll_count == 0

    ProviderAccount.objects.update(sweep_lease_until=timezone.now() - timedelta(seconds=1))
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.DONE
    assert not account.renew_sweep_lease(dead, 30)  # the dead sweep could not carry on


def test_it_fails_a_task_past_its_deadline(alice, simulator, settings):
    simulator.simulator.config.speed = 1.0
    settings.AIGPTIMAGE_TASK_DEADLINE = 0.3
    generation = generate(alice, "takes forever", resolution="4K")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == "timeout"
    assert "took too long" in generation.fail_message


def test_it_retries_a_failed_generation_as_a_new_task(alice, simulator):
    generation = generate(alice, "no [sim:fail]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    old_request_id = generation.request_id
    assert generation.retry()
    assert generation.request_id != old_request_id
    assert generation.status == Generation.Status.QUEUED
    assert not generation.retry()  # only a failed generation can be retried


def test_it_stores_every_result_of_a_retry_after_a_partial_download(
    alice, simulator, django_capture_on_commit_callbacks
):
    generation = generate(alice, "two results [sim:multi]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    first_try = generation.images.get(index=0)
    # The second result expired before it was saved: one image of the first try is left.
    generation.images.filter(index=1).delete()
    Generation.objects.filter(pk=generation.pk).update(status=Generation.Status.FAILED)
    generation.refresh_from_db()

    with django_capture_on_commit_callbacks(execute=True):
        assert generation.retry()
    assert not default_storage.exists(first_try.file.name)
    tasks.wake_submission()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    images = list(generation.images.all())
    assert [image.index for image in images] == [0, 1]
    assert first_try.pk not in {image.pk for image in images}
