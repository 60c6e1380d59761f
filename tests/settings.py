"""Settings for test processes only: the app's own settings, made fast where that costs nothing.

pytest-django loads this module (pyproject.toml), and the tests hand it on to the processes
they start (runserver, qcluster, `manage.py shell`) as DJANGO_SETTINGS_MODULE. Production and
`make run` never see it.
"""

from __future__ import annotations

import os

# The app refuses to start without a SECRET_KEY unless DEBUG is on; tests need no real one.
os.environ.setdefault("SECRET_KEY", "tests-only-" + "k" * 50)

from banana_site.settings import *  # noqa: E402, F403

# Django's default PBKDF2 hasher takes about half a second per password on purpose; tests
# create many users and sign in often, and no test is about the strength of the hash.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# With REDIS_URL the cache is one Redis database shared by every test process (xdist workers,
# the servers the tests start): each process keeps its keys under a prefix of its own, so that a
# test clearing its rate-limit counters (tests/conftest.py) never clears another's.
if REDIS_URL:  # noqa: F405
    CACHES["default"]["KEY_PREFIX"] = f"test-{os.getpid()}"  # noqa: F405
