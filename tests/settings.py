"""Settings for test processes only: the app's own settings, made fast where that costs nothing.

pytest-django loads this module (pyproject.toml), and the tests hand it on to the processes
they start (runserver, qcluster, `manage.py shell`) as DJANGO_SETTINGS_MODULE. Production and
`make run` never see it.
"""

from __future__ import annotations

import os

# The app refuses to start without a SECRET_KEY unless DEBUG is on; tests need no real one.
os.environ.setdefault("SECRET_KEY", "tests-only-" + "k" * 50)

import dj_database_url

from banana_site.settings import *  # noqa: E402, F403

# Django's default PBKDF2 hasher takes about half a second per password on purpose; tests
# create many users and sign in often, and no test is about the strength of the hash.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# `make test-pg`: the tests' own database on PostgreSQL, and django-q2's broker and the cache
# on Redis, as a scaled-out site runs. The processes the tests start never inherit these
# (tests.support.process_env): each is given a database of its own.
TEST_DATABASE_URL = os.getenv("TEST_DATABASE_URL", "")
if TEST_DATABASE_URL:
    # Connections are closed at the end of each request and task, as on SQLite: the tests start
    # many threads, and the test runs on one server share its connection limit.
    DATABASES = {"default": dj_database_url.parse(TEST_DATABASE_URL, conn_max_age=0)}
    # One database per test process (pytest-django adds the xdist worker's name), so that two
    # runs on one server never share one.
    DATABASES["default"]["TEST"] = {"NAME": f"test_banana_{os.getpid()}"}
TEST_REDIS_URL = os.getenv("TEST_REDIS_URL", "")
if TEST_REDIS_URL:
    REDIS_URL = TEST_REDIS_URL
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
    # A queue of its own for each test process: another xdist worker, or another run on the
    # same Redis, would otherwise take this one's messages.
    Q_CLUSTER = {key: value for key, value in Q_CLUSTER.items() if key != "orm"}  # noqa: F405
    Q_CLUSTER |= {"redis": REDIS_URL, "cluster_name": f"test-{os.getpid()}"}

# With REDIS_URL the cache is one Redis database shared by every test process (xdist workers,
# the servers the tests start): each process keeps its keys under a prefix of its own, so that a
# test clearing its rate-limit counters (tests/conftest.py) never clears another's.
if REDIS_URL:  # noqa: F405
    CACHES["default"]["KEY_PREFIX"] = f"test-{os.getpid()}"  # noqa: F405
