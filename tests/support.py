"""Helpers shared by the app-level tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

import pytest
from django.utils.module_loading import import_string
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from gallery.models import Generation


def require(condition: bool, reason: str) -> None:
    """Skip with a clear reason on a newcomer's machine; fail in CI (BANANA_REQUIRE_ALL=1)."""
    if condition:
        return
    if os.getenv("BANANA_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_queued_tasks(until: Callable[[], bool] | None = None, seconds: float = 15.0) -> None:
    """Work through the real django-q2 ORM queue as a worker would, until `until()` holds or
    the queue is empty.

    Tasks re-arm themselves (the poll sweep) and enqueue others (downloads), so this loops. It
    raises if `until` has not come true within `seconds`.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until is not None and until():
            return
        rows = list(OrmQ.objects.order_by("id"))
        if not rows:
            if until is None:
                return
            time.sleep(0.02)
            continue
        for row in rows:
            row.delete()
            task = SignedPackage.loads(row.payload)
            func = task["func"]
            if isinstance(func, str):
                func = import_string(func)
            func(*task["args"], **task["kwargs"])
    if until is not None and until():
        return
    raise AssertionError(f"condition not reached within {seconds} s")


def finished(*generations: Generation) -> Callable[[], bool]:
    ids = [g.pk for g in generations]
    return lambda: not Generation.objects.filter(pk__in=ids).pending().exists()


def generate_and_finish(owner, prompt: str, **settings) -> Generation:
    """A generation made through the real pipeline against the test's simulator, finished."""
    from gallery import tasks

    generation = Generation.objects.create(owner=owner, prompt=prompt, **settings)
    tasks.submit_queued()
    run_queued_tasks(until=finished(generation))
    generation.refresh_from_db()
    return generation


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = 20) -> None:
    """SIGINT first (qcluster then stops its workers cleanly), a kill if that hangs."""
    processes = list(processes)
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
