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
from gallery.models import Generation, Image, Lease, ProviderAccount
from tests.support import drop_queued_messages, finished, queued_messages, run_queued_tasks

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
    for field, size in [("thumbnail", (573, 320)), ("thumbnail_large", (1147, 640))]:
        thumb = PILImage.open(io.BytesIO(getattr(image, field).read()))
        assert thumb.format == "WEBP"
        assert thumb.size == size  # 16:9 by height


def test_it_stores_every_result_url(alice, simulator):
    generation = generate(alice, "two of them [sim:multi]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert sorted(generation.images.values_list("index", flat=True)) == [0, 1]


TURNED_DOWN = (
    "The image service turned this request down, so no image was made. Try changing the "
    "prompt or the settings. The image service said: "
)


@pytest.mark.parametrize(
    ("code", "said"),
    [
        ("400", "“invalid request parameters”."),
        ("422", "“parameter validation failed: the prompt was rejected”."),
        ("501", "“generation failed”."),
        ("505", "“feature disabled”."),
    ],
)
def test_it_fails_on_a_refused_request_without_retrying(alice, client, simulator, code, said):
    generation = generate(alice, f"refused [sim:{code}]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == code
    # Plain words first; the provider's own words may follow, never stand alone.
    assert generation.failure_text == TURNED_DOWN + said
    assert calls_for(simulator, generation) == 1
    assert tasks_for(simulator, generation) == []
    client.force_login(alice)
    assert TURNED_DOWN + said in client.get("/").content.decode()


@pytest.mark.parametrize(
    ("marker", "code", "said"),
    [
        ("fail", "400", "“The prompt or the generated image was flagged by the content policy. "),
        ("fail500", "500", "“internal error”."),
    ],
)
def test_it_fails_with_the_providers_reason_on_a_fail_result(alice, simulator, marker, code, said):
    generation = generate(alice, f"not allowed [sim:{marker}]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.fail_code == code
    assert generation.failure_text.startswith(
        "The image service could not make this image. The image service said: " + said
    )
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


def test_it_keeps_the_generation_queued_on_409_and_submits_later(alice, simulator, settings):
    settings.AIGPTIMAGE_CONFLICT_WAIT = 5.0  # longer than one runner's turn
    generation = generate(alice, "busy [sim:409=2]")
    before = timezone.now()
    tasks.submit_queued()
    generation.refresh_from_db()
    assert generation.status == Generation.Status.QUEUED
    assert not generation.fail_message
    assert generation.submit_attempts == 0  # a 409 is no failure
    assert (ProviderAccount.get().create_not_before - before).total_seconds() >= 4.9
    assert calls_for(simulator, generation) == 1

    settings.AIGPTIMAGE_CONFLICT_WAIT = 0.05
    ProviderAccount.objects.update(create_not_before=None)
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
    assert generation.submit_attempts == 0
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
    assert generation.failure_text == (
        "The image service kept failing, so we stopped trying. Nothing was charged twice; "
        "press Retry when it is back. The image service said: “internal server error”."
    )
    assert calls_for(simulator, generation) == 3
    assert tasks_for(simulator, generation) == []


def test_it_retries_a_broken_answer_with_the_same_request_id(alice, simulator, settings):
    settings.AIGPTIMAGE_RETRY_ATTEMPTS = 2
    generation = generate(alice, "html page [sim:broken]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert calls_for(simulator, generation) == 2
    # The HTML page said nothing worth quoting.
    assert generation.failure_text == (
        "The image service kept failing, so we stopped trying. Nothing was charged twice; "
        "press Retry when it is back."
    )


def test_it_fails_clearly_when_500s_while_polling_outlast_the_budget(alice, simulator, settings):
    settings.AIGPTIMAGE_RETRY_ATTEMPTS = 2
    generation = generate(alice, "down while rendering [sim:query500]")
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.FAILED
    assert generation.failure_text == (
        "The image service kept failing while we checked on this image, so we stopped. Press "
        "Retry to make it again. The image service said: “internal server error”."
    )


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
    alice, bob, client, simulator, settings, break_key, reason, words
):
    # Sends 0.5 s apart, so the first answer (the pause) arrives before a second could go.
    settings.AIGPTIMAGE_CREATE_RATE = 2.0
    # Probes further apart than a runner's turn (0.5 s): a runner waits only for a probe that
    # is due within its turn, and the reconcile sends the later ones.
    settings.AIGPTIMAGE_PAUSE_PROBE = 0.8
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
    time.sleep(0.85)
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


def test_it_retries_a_failed_download_without_generating_again(alice, simulator, settings):
    generation = generate(alice, "saved on the second try")
    run_queued_tasks(until=lambda: Generation.objects.get(pk=generation.pk).images.exists())
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE

    # The file server is unreachable once: the generation is kept and the download tried again.
    generation.images.all().delete()
    Generation.objects.filter(pk=generation.pk).update(status=Generation.Status.DOWNLOADING)
    generation.refresh_from_db()
    good_urls = generation.result_urls
    # An allowed file host where nothing listens: the connection is refused.
    settings.AIGPTIMAGE_RESULT_HOSTS_ALLOWED = [
        *settings.AIGPTIMAGE_RESULT_HOSTS_ALLOWED,
        "127.0.0.1:9",
    ]
    Generation.objects.filter(pk=generation.pk).update(
        result_urls=["http://127.0.0.1:9/refused.png"]
    )
    settings.AIGPTIMAGE_RETRY_BASE = 30.0  # so that the next try is plainly in the future
    assert tasks.download_images(generation.pk) == tasks.DownloadOutcome.RETRY
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DOWNLOADING
    assert generation.download_attempts == 1
    assert generation.retry_at > timezone.now()

    Generation.objects.filter(pk=generation.pk).update(
        result_urls=good_urls, retry_at=timezone.now()
    )
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert generation.images.count() == 1
    assert len(tasks_for(simulator, generation)) == 1


def test_it_never_runs_one_download_twice_at_once(alice, simulator):
    generation = generate(alice, "twice")
    run_queued_tasks(until=lambda: Generation.objects.get(pk=generation.pk).status == "done")
    generation.images.all().delete()
    Generation.objects.filter(pk=generation.pk).update(status=Generation.Status.DOWNLOADING)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(tasks.download_images, [generation.pk] * 2))
    assert sorted(o.value for o in outcomes) == ["done", "skipped"]
    assert Image.objects.filter(generation=generation).count() == 1


def test_it_keeps_the_first_copy_when_a_second_run_stores_the_same_image(alice, simulator):
    generation = generate(alice, "stored twice")
    run_queued_tasks(until=finished(generation))
    first = Image.objects.get(generation=generation)
    data = io.BytesIO(first.file.read())
    second = tasks.store_image(generation, first.index, data)
    assert second.pk == first.pk
    assert Image.objects.filter(generation=generation).count() == 1
    # The losing copy's files were removed, not left behind in storage.
    names = {first.file.name, first.thumbnail.name, first.thumbnail_large.name}
    stored = {
        f"{folder}/{alice.pk}/{name}"
        for folder in ("images", "thumbs")
        for name in default_storage.listdir(f"{folder}/{alice.pk}")[1]
    }
    assert stored == names


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


def claimed(limit: int) -> list[Generation]:
    return [g for g, _ in Generation.objects.claim_for_submission(timezone.now(), limit)]


def test_it_shares_slots_fairly_between_users(alice, bob, settings, simulator):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 2
    for i in range(4):
        Generation.objects.create(owner=alice, prompt=f"alice {i}")
    bobs = Generation.objects.create(owner=bob, prompt="bob's only one")
    first, second = claimed(5)
    assert first.owner == alice
    assert second == bobs
    assert claimed(5) == []


def test_it_rotates_slots_that_do_not_divide_evenly(alice, bob, charlie, settings):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 5
    settings.AIGPTIMAGE_CREATE_RATE = 1000.0
    users = [alice, bob, charlie]
    for user in users:
        for i in range(10):
            Generation.objects.create(owner=user, prompt=f"{user.username} {i}")
    served = dict.fromkeys(users, 0)
    for _ in range(3):
        for generation in claimed(5):
            served[generation.owner] += 1
            generation.mark_submitted(f"task-{generation.pk}")
        Generation.objects.in_flight().update(status=Generation.Status.DONE)
    # 15 slots in three rounds of 5: whoever got one slot in a round goes first in the next.
    assert list(served.values()) == [5, 5, 5]


def test_it_paces_create_task_under_the_tier_rate(alice, settings):
    settings.AIGPTIMAGE_CREATE_RATE = 4.0
    for i in range(6):
        Generation.objects.create(owner=alice, prompt=f"paced {i}")
    first = Generation.objects.claim_for_submission(timezone.now(), 3)
    second = Generation.objects.claim_for_submission(timezone.now(), 3)
    assert second == []  # the clock is past the last reserved send time
    times = [at for _, at in first]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [0.25, 0.25]


def test_it_does_not_send_a_create_task_well_after_its_reserved_time(alice, settings, simulator):
    """A worker starved of CPU finds its send times passed: it does not send them at once (a
    burst could share a second with the sends reserved after them and draw a 429) but takes
    fresh times at the end of the site's schedule."""
    settings.AIGPTIMAGE_CREATE_RATE = 10.0
    for i in range(3):
        Generation.objects.create(owner=alice, prompt=f"starved {i}")
    batch = Generation.objects.claim_for_submission(timezone.now(), 3)
    scheduled_until = ProviderAccount.get().create_not_before
    late = [(g, at - timedelta(seconds=1)) for g, at in batch]
    runner = tasks.Runner("submit", "submit:0", "test")
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        outcomes = tasks.send_batch(late, provider.get_client(), pool, runner)
    assert outcomes == [tasks.SubmitOutcome.ACCEPTED] * 3
    # Three fresh times after the schedule's end, a tenth of a second apart. On a loaded
    # machine a fresh time can itself pass unsent and be taken again, so the schedule may
    # move on further, never less.
    clock = ProviderAccount.get().create_not_before
    assert (clock - scheduled_until).total_seconds() >= 0.3 - 0.005
    # It waited for them: the provider saw the three a tenth of a second apart or more, not in
    # a burst. (Had the test itself been slow since the claim, the schedule's end would be past
    # already and the fresh times would start at once: hence no wait for the schedule's end.)
    created = sorted(
        provider.get_client().get_task(g.task_id).create_time
        for g in Generation.objects.filter(pk__in=[g.pk for g, _ in batch])
    )
    gaps = [(b - a).total_seconds() for a, b in zip(created, created[1:], strict=False)]
    assert all(gap >= 0.1 - 0.005 for gap in gaps), gaps
    assert time.monotonic() - started >= 0.2 - 0.005


def test_it_never_claims_more_slots_from_parallel_workers(alice, settings, simulator):
    settings.AIGPTIMAGE_MAX_ACTIVE_TASKS = 2
    settings.AIGPTIMAGE_CREATE_RATE = 1e6
    for i in range(10):
        Generation.objects.create(owner=alice, prompt=f"race {i}")

    def claim_for_a_while(_) -> int:
        total, until = 0, time.monotonic() + 0.5
        while time.monotonic() < until:
            total += len(Generation.objects.claim_for_submission(timezone.now(), 1))
        return total

    with ThreadPoolExecutor(6) as pool:
        claims = list(pool.map(claim_for_a_while, range(6)))
    assert sum(claims) == 2
    assert Generation.objects.in_flight().count() == 2


def test_it_reconciles_a_submission_whose_worker_died(alice, simulator, settings):
    generation = Generation.objects.create(owner=alice, prompt="orphaned")
    assert claimed(1) == [generation]
    # The worker sent createTask and died before writing the answer down; its claim lapsed.
    client = provider.get_client()
    task_id = client.create_task(generation.prompt, request_id=str(generation.request_id))
    Generation.objects.filter(pk=generation.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE
    assert generation.task_id == task_id
    assert tasks_for(simulator, generation) == [task_id]


def test_it_restarts_a_dropped_poll_runner(alice, simulator):
    generation = generate(alice, "runner lost")
    tasks.submit_queued()
    # The poll runner's queue message is lost (Redis broker crash, say), a while ago.
    drop_queued_messages()
    Lease.objects.update(requested_at=timezone.now() - timedelta(minutes=1))
    tasks.reconcile()
    assert queued_messages()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    assert generation.status == Generation.Status.DONE


def test_it_runs_one_runner_per_lease(db):
    token = Lease.take("poll:0", 30)
    assert token
    assert Lease.take("poll:0", 30) is None
    assert Lease.renew("poll:0", token, 30)
    Lease.release("poll:0", token, 30)
    assert Lease.take("poll:0", 30)


def test_it_hands_a_lease_straight_to_the_successor(db):
    holder = Lease.take("poll:0", 30)
    assert Lease.succeed("poll:0") is None  # nobody asked for a successor
    assert Lease.ask_successor("poll:0", holder)
    assert not Lease.ask_successor("poll:0", holder)  # one message per turn
    successor = Lease.succeed("poll:0")
    assert successor and Lease.succeed("poll:0") is None  # one successor
    assert Lease.successor_waiting("poll:0", holder)
    Lease.release("poll:0", holder, 30)
    # Never free in between: the successor holds it, and nobody else can take it.
    assert Lease.held_by("poll:0", successor)
    assert Lease.take("poll:0", 30) is None
    assert not Lease.successor_waiting("poll:0", successor)


def test_it_asks_for_a_successor_at_the_end_of_its_turn_and_stops_if_none_comes(
    alice, simulator, settings
):
    """A poll runner with work left past its turn asks for a successor (one queue message)
    and works on, but stops RUNNER_HANDOVER_TURNS turns later if no successor came (a cluster
    that stops)."""
    settings.RUNNER_SECONDS = 0.2
    settings.RUNNER_HANDOVER_TURNS = 5
    generation = Generation.objects.create(owner=alice, prompt="a long one")
    Generation.objects.filter(pk=generation.pk).update(
        status=Generation.Status.GENERATING,
        task_id="still-rendering",
        submitted_at=timezone.now(),
        next_poll_at=timezone.now() + timedelta(minutes=5),
    )
    started = time.monotonic()
    tasks.poll_due()
    assert 1.15 <= time.monotonic() - started < 3  # 0.2 s, then 5 x 0.2 s
    assert queued_messages() == 1  # the successor's message, and no other
    assert Lease.take("poll:0", 30)  # and it let go


def test_it_sends_one_message_for_a_burst_of_wake_ups(db):
    for _ in range(5):
        tasks.wake_submission()
    assert queued_messages() == 1


def test_it_takes_over_from_a_runner_that_died(alice, simulator):
    dead = Lease.take("poll:0", 30)
    generation = generate(alice, "after a crash")
    tasks.submit_queued()
    tasks.poll_due()  # the lease is held: this runner leaves at once
    assert Generation.objects.get(pk=generation.pk).poll_count == 0

    Lease.objects.filter(name="poll:0").update(expires_at=timezone.now() - timedelta(seconds=1))
    tasks.reconcile()
    run_queued_tasks(until=finished(generation))
    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.DONE
    assert not Lease.renew("poll:0", dead, 30)  # the dead runner could not carry on


def test_it_resumes_a_killed_runner_when_a_worker_starts(alice, simulator, settings):
    settings.RUNNER_LEASE = 0.6
    generation = generate(alice, "killed mid-way")
    tasks.submit_queued()
    Lease.take("poll:0", settings.RUNNER_LEASE)  # held by a runner that was just SIGKILLed
    drop_queued_messages()
    started = time.monotonic()
    tasks.on_worker_start()
    run_queued_tasks(until=finished(generation))
    assert Generation.objects.get(pk=generation.pk).status == Generation.Status.DONE
    assert time.monotonic() - started < 5


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


def test_it_keeps_the_queue_short_and_hands_the_other_downloads_over_later(alice, settings):
    """Downloads wait in the database, not in the queue, beyond DOWNLOAD_QUEUE_MAX messages:
    a runner's own message never queues behind a long line of them."""
    settings.DOWNLOAD_QUEUE_MAX = 2
    now = timezone.now()
    for i in range(5):
        Generation.objects.create(
            owner=alice,
            prompt=f"finished {i}",
            status=Generation.Status.DOWNLOADING,
            result_urls=["https://files.example/x.png"],
            retry_at=now,
        )
    assert tasks.hand_over_downloads(now) == 2
    assert queued_messages() == 2
    assert tasks.hand_over_downloads(now) == 0  # the queue is full
    assert Generation.objects.due_for_download(now).count() == 3  # and they are not lost
    drop_queued_messages()  # the workers took those two
    assert tasks.hand_over_downloads(now) == 2
