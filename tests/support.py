"""Helpers shared by the app-level tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.signing import SignedPackage

from gallery.models import Generation


def require(condition: bool, reason: str) -> None:
    """Skip with a clear reason on a newcomer's machine; fail in CI (BANANA_REQUIRE_ALL=1)."""
    if condition:
        return
    if os.getenv("BANANA_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def postgres_reachable(url: str) -> tuple[bool, str]:
    """Whether the PostgreSQL server of `url` answers (in its `postgres` database, which is
    there before any of ours), and the reason to skip if not."""
    try:
        import psycopg

        psycopg.connect(url, dbname="postgres", connect_timeout=2).close()
    except Exception as e:  # any failure to connect means "not on this machine"
        return False, f"PostgreSQL not reachable ({e.__class__.__name__})"
    return True, ""


def redis_reachable(url: str) -> tuple[bool, str]:
    """Whether the Redis server of `url` answers, and the reason to skip if not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as e:  # any failure to connect means "not on this machine"
        return False, f"Redis not reachable ({e.__class__.__name__})"
    return True, ""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_queued_tasks(until: Callable[[], bool] | None = None, seconds: float = 15.0) -> None:
    """Work through django-q2's real queue (the ORM broker's table, or Redis with `make
    test-pg`) as a worker would, until `until()` holds or the queue is empty.

    Tasks re-arm themselves (the poll sweep) and enqueue others (downloads), so this loops. It
    raises if `until` has not come true within `seconds`.
    """
    broker = get_broker()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until is not None and until():
            return
        # Asked first: the Redis broker's dequeue waits a second on an empty queue.
        if not broker.queue_size():
            if until is None:
                return
            time.sleep(0.02)
            continue
        for message_id, payload in broker.dequeue() or []:
            broker.acknowledge(message_id)
            task = SignedPackage.loads(payload)
            func = task["func"]
            if isinstance(func, str):
                func = import_string(func)
            func(*task["args"], **task["kwargs"])
    if until is not None and until():
        return
    raise AssertionError(f"condition not reached within {seconds} s")


def queued_messages() -> int:
    """How many messages wait in django-q2's queue, whichever the broker."""
    return get_broker().queue_size()


def drop_queued_messages() -> None:
    """Lose every message in django-q2's queue, as a broker that crashed would."""
    get_broker().purge_queue()


def finished(*generations: Generation) -> Callable[[], bool]:
    ids = [g.pk for g in generations]
    return lambda: not Generation.objects.filter(pk__in=ids).pending().exists()


# Real processes (runserver, qcluster, `manage.py shell`) load the test settings too.
TEST_SETTINGS = "tests.settings"


def process_env() -> dict[str, str]:
    """The environment of a process a test starts on the test settings: this one's, but never
    the variables that put this process's own database and queue on PostgreSQL and Redis
    (`make test-pg`, tests/settings.py), which would win over the DATABASE_URL and REDIS_URL
    the test gives it."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in ("TEST_DATABASE_URL", "TEST_REDIS_URL")
    }
    return {**inherited, "DJANGO_SETTINGS_MODULE": TEST_SETTINGS}


@contextmanager
def running(
    *commands: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    ready: str | Callable[[], bool] | None = None,
    timeout: float = 30.0,
    stop_timeout: float = 20.0,
) -> Iterator[list[subprocess.Popen]]:
    """Run each command in a process group of its own for the length of a `with` block.

    `ready` is a URL that must answer (with any status) or a callable that must return true
    before the block starts, within `timeout` seconds; a process that exits meanwhile fails at
    once with the end of the log. Output goes to the end of `log`, which the processes share.
    On leaving, every group is stopped at once as Ctrl-C would stop it (qcluster then stops its
    workers cleanly), and killed if it has not exited within `stop_timeout` seconds.
    """
    processes: list[subprocess.Popen] = []
    try:
        with log.open("ab") as out:
            for cmd in commands:
                processes.append(
                    subprocess.Popen(
                        cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, process_group=0
                    )
                )
        if ready is not None:
            _wait_until_ready(processes, ready, timeout, log)
        yield processes
    finally:
        stop_processes(processes, timeout=stop_timeout)


def _wait_until_ready(
    processes: list[subprocess.Popen], ready: str | Callable[[], bool], timeout: float, log: Path
) -> None:
    def answers(url: str) -> bool:
        try:
            requests.get(url, timeout=1)
        except requests.RequestException:  # not listening yet, or not answering yet
            return False
        return True

    check = (lambda: answers(ready)) if isinstance(ready, str) else ready
    deadline = time.monotonic() + timeout
    while not check():
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(
                    f"{shlex.join(map(str, process.args))} exited with {process.returncode} "
                    f"before it was ready:\n{_tail(log)}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready within {timeout} s:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_processes(processes: Sequence[subprocess.Popen], timeout: float = 20) -> None:
    """Stop processes started in groups of their own (`process_group=0`), all at once.

    SIGINT to each group first, as Ctrl-C sends it: qcluster's parent then stops its workers
    cleanly (they ignore SIGINT themselves). A group whose leader has not exited within
    `timeout` seconds is killed, and so is anything a leader left behind.
    """
    for process in processes:
        _signal_group(process, signal.SIGINT)
    deadline = time.monotonic() + timeout
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(process.pid, signum)


@contextmanager
def fresh_postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server at `server_url` for one test: yields its
    URL, and drops it afterwards, whoever is still connected."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
