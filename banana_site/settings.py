"""Banana Gallery settings: one file, read from environment variables only.

Every default is chosen so that `make run` works on a fresh clone: SQLite, django-q2's ORM
broker, media on local disk. Scale-out is a matter of setting DATABASE_URL, REDIS_URL and a
storage backend, never of editing this file.
"""

from __future__ import annotations

import os
import tempfile
from decimal import Decimal, InvalidOperation
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    return os.getenv(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: int) -> int:
    return int(os.getenv(name, default))


def envfloat(name: str, default: float) -> float:
    return float(os.getenv(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


def envprices(name: str, default: str) -> dict[str, int]:
    """Whole credits per resolution, "1K=1,2K=2,4K=4"; a resolution left out keeps its
    default. A typo stops the process with the variable's name rather than charging wrong."""
    prices = {}
    for text in (default, os.getenv(name, "")):
        for item in filter(None, (part.strip() for part in text.split(","))):
            resolution, _, credits = (part.strip() for part in item.partition("="))
            resolution = resolution.upper()
            whole = credits.isascii() and credits.isdigit()
            if resolution not in ("1K", "2K", "4K") or not whole:
                raise ValueError(f"{name}: {item!r} is not RESOLUTION=CREDITS (1K, 2K or 4K)")
            prices[resolution] = int(credits)
    return prices


def envdecimal(name: str) -> Decimal | None:
    """A non-negative decimal, or None when the variable is unset or empty."""
    text = os.getenv(name, "").strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value < 0:
        raise ValueError(f"{name}: {text!r} is not a non-negative decimal number")
    return value


SECRET_KEY = os.getenv("SECRET_KEY", "dev-only-insecure-key-set-SECRET_KEY-in-production")
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")
SITE_URL = os.getenv("SITE_URL", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "django_q",
    "csp",
    "django_ratelimit",
    "gallery",
    "ledger",
]
# Development-only commands (`manage.py simulator`), so a production `manage.py help` has none.
if DEBUG:
    INSTALLED_APPS.append("devtools")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",
]

ROOT_URLCONF = "banana_site.urls"
WSGI_APPLICATION = "banana_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "gallery.context_processors.provider_status",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=envint("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A web process and a worker write at once. With SQLite's default deferred transactions a
    # read-then-write fails at once with "database is locked"; IMMEDIATE takes the write lock
    # up front and WAL lets readers go on meanwhile.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file too: threads then get connections of their own that lock as in
    # production, where a shared in-memory database would fail at once with "table is locked".
    # One file per test process, so that two test runs never share a database.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"banana-test-{os.getpid()}.sqlite3")
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.getenv("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    # Django's own Redis cache increments atomically, which is all django-ratelimit needs.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
else:
    # The embedded setup serves the web from one process, so a per-process cache counts every
    # request; several web processes must share REDIS_URL for rate limits to hold.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]
RATELIMIT_VIEW = "gallery.views.rate_limited"
# Rate limits (django-ratelimit syntax): sign-in and sign-up attempts per client address, and
# generations a user may ask for, to protect the account's credits from a runaway script.
RATELIMIT_LOGIN = os.getenv("RATELIMIT_LOGIN", "20/m")
RATELIMIT_SIGNUP = os.getenv("RATELIMIT_SIGNUP", "20/h")
RATELIMIT_GENERATE = os.getenv("RATELIMIT_GENERATE", "30/m")

# Only our own scripts, styles and images: htmx is served from here and needs no eval.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [SELF],
        "object-src": [NONE],
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gallery:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", BASE_DIR / "media"))
MEDIA_URL = "media/"
STORAGES = {
    "default": {
        "BACKEND": os.getenv("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if envbool("STATIC_MANIFEST", False)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# The provider. Without a key `make run` starts the simulator and points these at it.
AIGPTIMAGE_API_KEY = os.getenv("AIGPTIMAGE_API_KEY", "")
AIGPTIMAGE_BASE_URL = os.getenv("AIGPTIMAGE_BASE_URL", "https://aigptimage.com")
AIGPTIMAGE_TIMEOUT = envfloat("AIGPTIMAGE_TIMEOUT", 30.0)
# Never more tasks active at the provider than this: the key's tier allows 5 on "basic".
AIGPTIMAGE_MAX_ACTIVE_TASKS = envint("AIGPTIMAGE_MAX_ACTIVE_TASKS", 5)
# createTask calls per second across the whole site: the basic tier allows 5 a second but
# 180 a minute, so 3 a second never draws a 429. Raise it with the tier (standard 10, pro 20).
AIGPTIMAGE_CREATE_RATE = envfloat("AIGPTIMAGE_CREATE_RATE", 3.0)
# Polling. Until AIGPTIMAGE_POLL_HISTORY_MIN renders of a resolution are known, a generation is
# polled every AIGPTIMAGE_POLL_INTERVAL seconds, growing with age up to the max. After that the
# schedule is planned from the last AIGPTIMAGE_POLL_HISTORY render times (costTime): as few
# polls as possible while all but AIGPTIMAGE_POLL_MISS of the renders are seen within
# AIGPTIMAGE_POLL_LATENCY seconds of their end.
AIGPTIMAGE_POLL_INTERVAL = envfloat("AIGPTIMAGE_POLL_INTERVAL", 3.0)
AIGPTIMAGE_POLL_MAX_INTERVAL = envfloat("AIGPTIMAGE_POLL_MAX_INTERVAL", 15.0)
AIGPTIMAGE_POLL_HISTORY = envint("AIGPTIMAGE_POLL_HISTORY", 400)
AIGPTIMAGE_POLL_HISTORY_MIN = envint("AIGPTIMAGE_POLL_HISTORY_MIN", 30)
AIGPTIMAGE_POLL_LATENCY = envfloat("AIGPTIMAGE_POLL_LATENCY", 1.7)
AIGPTIMAGE_POLL_MISS = envfloat("AIGPTIMAGE_POLL_MISS", 0.05)
# recordInfo calls per second across the whole site (basic tier allows 20/s, 1000/min).
AIGPTIMAGE_POLL_BUDGET = envint("AIGPTIMAGE_POLL_BUDGET", 15)
# A task still unfinished after this many seconds at the provider is failed as timed out.
AIGPTIMAGE_TASK_DEADLINE = envfloat("AIGPTIMAGE_TASK_DEADLINE", 1800.0)
# 500s and network errors are retried this many times, with jittered exponential backoff
# from AIGPTIMAGE_RETRY_BASE seconds (capped at a minute), before a generation fails.
AIGPTIMAGE_RETRY_ATTEMPTS = envint("AIGPTIMAGE_RETRY_ATTEMPTS", 8)
AIGPTIMAGE_RETRY_BASE = envfloat("AIGPTIMAGE_RETRY_BASE", 2.0)
# After a 409 (the provider's active-task slots are full) wait this long before submitting.
AIGPTIMAGE_CONFLICT_WAIT = envfloat("AIGPTIMAGE_CONFLICT_WAIT", 10.0)
# How long a paused (401/402) provider waits before a single probe submission.
AIGPTIMAGE_PAUSE_PROBE = envfloat("AIGPTIMAGE_PAUSE_PROBE", 60.0)
# A success record may name several result URLs; each is a download, so more than this are
# dropped (with a warning in the log).
AIGPTIMAGE_MAX_RESULT_URLS = envint("AIGPTIMAGE_MAX_RESULT_URLS", 4)
# Result files are fetched only over https from public addresses. The "host:port" pairs listed
# here may also be reached over plain http and on loopback or private addresses: that is how
# `make run`, the tests and the benchmarks reach the simulator (e.g. "127.0.0.1:8765").
AIGPTIMAGE_RESULT_HOSTS_ALLOWED = envlist("AIGPTIMAGE_RESULT_HOSTS_ALLOWED", "")
# Result files. DOWNLOAD_DEADLINE is a wall-clock limit on one whole transfer. A file host
# that is down or slow is tried again with backoff for as long as the result URLs may still be
# valid (AIGPTIMAGE_RESULT_TTL: the family keeps them about 24 hours), so an outage never
# loses a paid image; anything else unexpected (a storage error, say) fails the generation
# after DOWNLOAD_ATTEMPTS tries.
DOWNLOAD_MAX_BYTES = envint("DOWNLOAD_MAX_BYTES", 80 * 1024 * 1024)
# Seconds for the whole download of a generation's result files, connections, headers and
# bodies together.
DOWNLOAD_DEADLINE = envfloat("DOWNLOAD_DEADLINE", 120.0)
# Pillow's decompression-bomb limit: an image with more pixels is refused from its header. The
# largest documented outputs are 8:1 and 1:8 at 4K, 12288x1536 = 18.9 Mpx (1:1 at 4K is 16.8 Mpx),
# and a result may have 1.5 times its documented size (28.3 Mpx): 40 Mpx admits all of them,
# while the 160 MB that 40 Mpx takes decoded as RGBA still fits a worker.
IMAGE_MAX_PIXELS = envint("IMAGE_MAX_PIXELS", 40_000_000)
DOWNLOAD_ATTEMPTS = envint("DOWNLOAD_ATTEMPTS", 8)
DOWNLOAD_RETRY_MAX = envfloat("DOWNLOAD_RETRY_MAX", 300.0)
AIGPTIMAGE_RESULT_TTL = envfloat("AIGPTIMAGE_RESULT_TTL", 86400.0)
# Thumbnails keep the image's shape and are sized by height: this tall for the gallery's rows at
# 1x, and a second one twice as tall for 2x screens (gallery.provider.thumbnail_size).
THUMBNAIL_HEIGHT = envint("THUMBNAIL_HEIGHT", 320)
# The background runners. Each holds a lease that it renews every RUNNER_LEASE / 3 seconds, so a
# killed worker's work is picked up by another within RUNNER_LEASE seconds. A runner works for
# RUNNER_SECONDS and then hands over to a fresh copy of itself: short, because a cluster waits
# for its running tasks when it stops. PIPELINE_RUNNERS submission runners and as many poll
# runners may run at once across every cluster (more only help on PostgreSQL).
RUNNER_LEASE = envfloat("RUNNER_LEASE", 6.0)
RUNNER_SECONDS = envfloat("RUNNER_SECONDS", 10.0)
# A runner with work left at the end of its turn works on until its successor's task starts
# (it may wait in the queue behind downloads), for at most this many more turns.
RUNNER_HANDOVER_TURNS = envint("RUNNER_HANDOVER_TURNS", 5)
# Download tasks are sent while the broker holds fewer messages than this; the rest wait in the
# database (due), so that a runner's message never queues behind a long line of downloads.
DOWNLOAD_QUEUE_MAX = envint("DOWNLOAD_QUEUE_MAX", 8)
PIPELINE_RUNNERS = envint("PIPELINE_RUNNERS", 1)

# The price table of the cost ledger (ledger/models.py): what the provider charges per task, in
# its credits, by resolution (the simulator's CREDIT_COST by default). With PRICE_PER_CREDIT
# set, each ledger entry also carries its price in money, in PRICE_CURRENCY (a code or symbol
# shown beside amounts). Each entry keeps the price it was accepted at, so changing these never
# changes the past.
PRICE_CREDITS = envprices("PRICE_CREDITS", "1K=1,2K=2,4K=4")
PRICE_PER_CREDIT = envdecimal("PRICE_PER_CREDIT")
PRICE_CURRENCY = os.getenv("PRICE_CURRENCY", "").strip()
if len(PRICE_CURRENCY) > 8:
    raise ValueError(f"PRICE_CURRENCY: {PRICE_CURRENCY!r} is longer than 8 characters")
# Credits each user may spend a calendar month (0: no limit), shown on the usage page.
BUDGET_MONTHLY_CREDITS = envint("BUDGET_MONTHLY_CREDITS", 0)

# Two workers are mostly taken by the submission and poll runners; the others download.
Q_WORKERS = envint("Q_WORKERS", 4)
Q_CLUSTER = {
    "name": "banana",
    "workers": Q_WORKERS,
    "recycle": 200,
    "max_rss": 300_000,
    # A runner runs up to RUNNER_SECONDS; a download up to DOWNLOAD_DEADLINE (120 s). The ORM
    # broker hands a task out again after `retry` seconds, so `retry` must exceed the longest a
    # task can sit in a cluster: timeout + 3 + queue_limit / workers * timeout = 150 + 3 + 2 *
    # 150 = 453 s with the defaults, or a slow task would run twice at once. (The leases make
    # a second run harmless anyway: it finds the runner's lease or the generation held.)
    "timeout": 150,
    "retry": 600,
    "max_attempts": 2,
    "queue_limit": 2 * Q_WORKERS,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    # How often the ORM broker is asked for new tasks: a finished render's download starts
    # within this long of its handover.
    "poll": 0.1,
    "sync": envbool("Q_SYNC", False),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django": {"level": "WARNING"}},
}
