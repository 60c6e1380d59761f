from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from simulator import DEFAULT_API_KEY, SimulatorConfig, SimulatorServer, start_in_thread

if TYPE_CHECKING:
    from tests.oidc import OIDCProvider
    from tests.s3 import Bucket

# Simulator fixtures: a fresh provider simulator on loopback for every test that asks for one.


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    """Fast tasks (a 1K task takes about 0.3 s); override or mutate this to change the server."""
    return SimulatorConfig(speed=0.02, seed=1)


@pytest.fixture
def simulator(simulator_config: SimulatorConfig) -> Iterator[SimulatorServer]:
    """A running simulator: `simulator.base_url`, and `simulator.simulator` for status/config."""
    server = start_in_thread(simulator_config)
    yield server
    server.shutdown()
    server.server_close()


# The OpenID Connect provider for single sign-on: one process per test session.


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory) -> Iterator[OIDCProvider]:
    """A real OpenID Connect provider on loopback (tests/oidc_provider/, django-oauth-toolkit)
    with the user olga and one confidential client; see `OIDCProvider` in tests/oidc.py.

    Skips where django-oauth-toolkit is missing, and fails then with BANANA_REQUIRE_ALL=1.
    """
    from tests.oidc import provider_running

    with provider_running(tmp_path_factory.mktemp("oidc_provider")) as provider:
        yield provider


# Object storage: a real S3-compatible server (moto's server mode) on loopback, one per test
# process, and a fresh private bucket for each test that asks for one.


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of an S3-compatible server on loopback; see tests/s3.py.

    Skips where moto[server] is missing, and fails then with BANANA_REQUIRE_ALL=1.
    """
    from tests.s3 import server_running

    with server_running() as endpoint_url:
        yield endpoint_url


@pytest.fixture
def s3_bucket(s3_server, settings) -> Bucket:
    """A new empty bucket on `s3_server`, with the app's media stored in it for this test, as
    STORAGE_BACKEND=s3 stores them (and the CSP's img-src allowing its origin)."""
    from tests.s3 import use_new_bucket

    return use_new_bucket(s3_server, settings)


# App-level fixtures: three users, and settings that point the app at the test's simulator.


@pytest.fixture
def alice(db):
    from django.contrib.auth.models import User

    return User.objects.create_user("alice", password="password-alice")


@pytest.fixture
def bob(db):
    from django.contrib.auth.models import User

    return User.objects.create_user("bob", password="password-bob")


@pytest.fixture
def charlie(db):
    from django.contrib.auth.models import User

    return User.objects.create_user("charlie", password="password-charlie")


def clear_cache(cache) -> None:
    """Forget this process's cache entries. On Redis only the keys under this process's prefix
    (tests/settings.py): Django's clear() would flush every process's keys at once."""
    prefix = cache.key_prefix
    if not prefix or not hasattr(cache, "_cache"):
        cache.clear()
        return
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


# `make test-pg`: the tests' database on PostgreSQL, the queue on Redis (tests/settings.py).


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """pytest-django's hook before it makes the test database: on PostgreSQL the server must
    answer, or every test that needs the database skips (and fails with BANANA_REQUIRE_ALL=1)."""
    from django.conf import settings

    from tests.support import postgres_reachable, require

    if settings.TEST_DATABASE_URL:
        require(*postgres_reachable(settings.TEST_DATABASE_URL))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker) -> Iterator[None]:
    """pytest-django's test database, made free to drop at the end: a thread that a test
    started (a pool racing for claims) keeps its connection until it is garbage collected,
    and PostgreSQL refuses to drop a database anyone is still connected to."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session", autouse=True)
def redis_answers() -> None:
    """On Redis the server must answer, or every test skips (and fails with
    BANANA_REQUIRE_ALL=1): session fixtures come before the others, which clear its cache."""
    from django.conf import settings

    from tests.support import redis_reachable, require

    if settings.TEST_REDIS_URL:
        require(*redis_reachable(settings.TEST_REDIS_URL))


@pytest.fixture(autouse=True)
def empty_queue() -> Iterator[None]:
    """On Redis, queue messages outlive the test's database, where the ORM broker's rows go
    with it: each test starts with this process's queue empty and leaves it gone."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    if Conf.ORM:
        yield
        return
    broker = get_broker()
    broker.purge_queue()
    yield
    broker.delete_queue()


@pytest.fixture(autouse=True)
def steady_rate_limit_windows(monkeypatch):
    """django-ratelimit counts in fixed windows ("5/m": a minute) that end at a set second of
    the clock, so a test that ran across a window's end saw its counts start again from zero
    halfway (a rare failure of the rate-limit tests on a loaded machine). Here each window
    ends a second short of one period after the test started: none ends within a test, and
    `time_left` counts down as in a window just begun ("about 59 seconds")."""
    import django_ratelimit.core

    started = int(time.time())

    def window_end(value, period: int) -> int:
        return started + period - 1

    monkeypatch.setattr(django_ratelimit.core, "_get_window", window_end)


@pytest.fixture(autouse=True)
def app_settings(request, settings, tmp_path):
    """Fast timings, media in a temporary folder, and the provider at the test's simulator.

    A test that does not ask for the simulator gets a base URL where nothing listens, so no
    test can reach a real provider by accident.
    """
    from django.core.cache import cache

    from gallery import models

    clear_cache(cache)  # rate-limit counters start from zero in every test
    models._plans.clear()  # and every test plans its polls on its own history
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.AIGPTIMAGE_API_KEY = DEFAULT_API_KEY
    settings.AIGPTIMAGE_BASE_URL = "http://127.0.0.1:9"
    settings.AIGPTIMAGE_TIMEOUT = 5.0
    settings.AIGPTIMAGE_POLL_INTERVAL = 0.05
    settings.AIGPTIMAGE_POLL_BUDGET = 15  # the simulator key's "basic" tier allows 20 a second
    settings.AIGPTIMAGE_POLL_MAX_INTERVAL = 0.1
    settings.AIGPTIMAGE_RETRY_BASE = 0.01
    settings.AIGPTIMAGE_CONFLICT_WAIT = 0.05
    settings.AIGPTIMAGE_PAUSE_PROBE = 0.3
    settings.AIGPTIMAGE_CREATE_RATE = 50.0
    settings.RUNNER_SECONDS = 0.5
    # No successor runs in the test's process: a runner stops at the end of its turn, and
    # run_queued_tasks runs the message it leaves.
    settings.RUNNER_HANDOVER_TURNS = 0
    settings.RUNNER_LEASE = 2.0
    if "simulator" in request.fixturenames:
        settings.AIGPTIMAGE_BASE_URL = request.getfixturevalue("simulator").base_url
        settings.AIGPTIMAGE_RESULT_HOSTS_ALLOWED = [settings.AIGPTIMAGE_BASE_URL.split("//")[1]]
