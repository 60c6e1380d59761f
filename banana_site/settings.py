"""Banana Gallery settings: one file, read from environment variables only.

Every default is chosen so that `make run` works on a fresh clone: SQLite, django-q2's ORM
broker, media on local disk. Scale-out is a matter of setting DATABASE_URL, REDIS_URL and a
storage backend, never of editing this file.
"""

from __future__ import annotations

import os
import re
import tempfile
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    return os.getenv(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: int) -> int:
    return int(os.getenv(name, default))


def envfloat(name: str, default: float) -> float:
    return float(os.getenv(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


def email_url(url: str) -> dict:
    """Django's EMAIL_* settings from one URL: `smtp://user:pass@host:587?tls=1`, `smtps://…`
    (TLS from the first byte, port 465), `console:` or `locmem:`. User and password may be
    percent-encoded, as in any URL."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("console", "locmem"):
        return {"EMAIL_BACKEND": f"django.core.mail.backends.{parts.scheme}.EmailBackend"}
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"EMAIL_URL: unknown scheme {parts.scheme!r} (smtp, smtps, console)")
    ssl = parts.scheme == "smtps" or query.get("ssl") in ("1", "true")
    return {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": parts.hostname or "localhost",
        "EMAIL_PORT": parts.port or (465 if ssl else 25),
        "EMAIL_HOST_USER": unquote(parts.username or ""),
        "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
        "EMAIL_USE_SSL": ssl,
        "EMAIL_USE_TLS": not ssl and query.get("tls") in ("1", "true"),
        "EMAIL_TIMEOUT": int(query.get("timeout", 20)),
    }


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


def proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """Django's SECURE_PROXY_SSL_HEADER from a header's name, "X-Forwarded-Proto": the request
    came over HTTPS when the proxy sets it to "https"."""
    name = name.strip()
    if not name:
        return None
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise ValueError(f"SECURE_PROXY_SSL_HEADER: {name!r} is not a header name")
    return "HTTP_" + name.upper().replace("-", "_"), "https"


def log_level(name: str, default: str) -> str:
    level = os.getenv(name, default).strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{name}: {level!r} is not DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def s3_origin(options: dict) -> str:
    """The scheme and host of the presigned URLs an S3Storage with these options makes, for
    the CSP. botocore decides between path style (`host/bucket/key`) and virtual-host style
    (`bucket.host/key`) from the endpoint, region, bucket name and addressing style, so it is
    asked rather than second-guessed; signing a URL needs no network and no real keys."""
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=options.get("endpoint_url"),
        region_name=options.get("region_name"),
        aws_access_key_id="origin",
        aws_secret_access_key="origin",
        config=Config(
            signature_version=options.get("signature_version"),
            s3={"addressing_style": options.get("addressing_style")},
        ),
    )
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": options["bucket_name"], "Key": "origin"}
    )
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


DEBUG = envbool("DEBUG", False)
# Sessions, password reset links and django-q2's queue messages are signed with it, so a key
# anyone can read in this file would let them forge all three: without DEBUG there is no
# default. `make run` makes a random one once (var/secret_key).
SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random value, the same for every web and "
            "worker process, e.g. the output of: "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = "dev-only-insecure-key-for-DEBUG"
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
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "accounts",
    "gallery",
    "ledger",
    "api",
]
# Development-only commands (`manage.py simulator`), so a production `manage.py help` has none.
if DEBUG:
    INSTALLED_APPS.append("devtools")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "gallery.middleware.refuse_nul_characters",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
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
                "gallery.context_processors.site_url",
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
# Images a user may ask for, and images asked for from one client address (several users behind
# one office address share it), to protect the account's credits from a runaway script
# (django-ratelimit syntax; empty: no limit). Four variations count four; re-runs and retries
# count too. Sign-in, sign-up and password reset are limited by allauth below.
RATELIMIT_GENERATE = os.getenv("RATELIMIT_GENERATE", "30/m")
RATELIMIT_GENERATE_ADDRESS = os.getenv("RATELIMIT_GENERATE_ADDRESS", "60/m")
# Requests with one API token, whatever they ask for (a status poll counts too): a script in a
# tight loop is slowed down on its own, without touching its user's other tokens or the web.
RATELIMIT_API_TOKEN = os.getenv("RATELIMIT_API_TOKEN", "120/m")
# Wrong passwords for a share link, from one client address and for one link from anywhere: a
# guesser is slowed down whether they try many links or one link from many addresses.
RATELIMIT_SHARE_PASSWORD = os.getenv("RATELIMIT_SHARE_PASSWORD", "5/m")
RATELIMIT_SHARE_PASSWORD_LINK = os.getenv("RATELIMIT_SHARE_PASSWORD_LINK", "20/m")

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
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "gallery:index"
LOGOUT_REDIRECT_URL = "account_login"

# Accounts (django-allauth): sign in by username or email; sign up with a username, an email
# address and a password; verification of that address "none", "optional" or "mandatory".
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "accounts.adapter.SocialAccountAdapter"
ACCOUNT_FORMS = {"login": "accounts.forms.LoginForm"}
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = os.getenv("ACCOUNT_EMAIL_VERIFICATION", "optional")
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Banana Gallery] "
# Throttling, in allauth's "amount/period/what" syntax. "ip" counts per client address, "key"
# per username or email address tried. Failed sign-ins are counted both ways: guesses from one
# address are slowed there without touching anyone else's sign-in, and guesses at one account
# from many addresses are stopped by the per-account limit, which lasts only minutes, so the
# real user is never locked out for good (a password reset ends it at once).
ACCOUNT_RATE_LIMITS = {
    "login": os.getenv("RATE_LIMIT_LOGIN", "30/m/ip"),
    "login_failed": os.getenv("RATE_LIMIT_LOGIN_FAILED", "10/m/ip,5/5m/key"),
    "signup": os.getenv("RATE_LIMIT_SIGNUP", "20/h/ip"),
    "reset_password": os.getenv("RATE_LIMIT_RESET_PASSWORD", "20/h/ip,3/h/key"),
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
}
# Behind a reverse proxy every request comes from the proxy's address. The client's is the one
# the proxy adds to X-Forwarded-For (say how many proxies that each add one stand in front), or
# in a header of the proxy's own that replaces any the client sent (CLIENT_IP_HEADER, e.g.
# X-Real-IP or CF-Connecting-IP). Sign-in and generation limits count that address.
ALLAUTH_TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0)
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = os.getenv("CLIENT_IP_HEADER", "").strip() or None
# Two-factor sign-in with an authenticator app and one-time recovery codes.
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = os.getenv("MFA_TOTP_ISSUER", "Banana Gallery")
# Single sign-on through OpenID Connect, on when OIDC_SERVER_URL is set (the issuer's URL,
# where /.well-known/openid-configuration is found). The login page then has a "Sign in with
# OIDC_NAME" button; new accounts made that way follow the registration mode as any other.
OIDC_SERVER_URL = os.getenv("OIDC_SERVER_URL", "")
SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"APPS": []}}
if OIDC_SERVER_URL:
    SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"].append(
        {
            "provider_id": "oidc",
            "name": os.getenv("OIDC_NAME", "single sign-on"),
            "client_id": os.getenv("OIDC_CLIENT_ID", ""),
            "secret": os.getenv("OIDC_CLIENT_SECRET", ""),
            # PKCE on: it costs nothing and providers increasingly require it.
            "settings": {"server_url": OIDC_SERVER_URL, "oauth_pkce_enabled": True},
        }
    )
# Registration modes ("open", "invite", "approval", "closed") and the email domains sign-up is
# open to (empty: any). These seed the setting stored in the database the first time it is
# read; after that staff change it on the sign-ups page, and these are no longer read.
REGISTRATION_MODE = os.getenv("REGISTRATION_MODE", "open")
REGISTRATION_EMAIL_DOMAINS = envlist("REGISTRATION_EMAIL_DOMAINS", "")

# Outgoing mail: EMAIL_URL (smtp://user:password@host:587?tls=1), or EMAIL_HOST and friends.
# With neither, mail is printed to the console (the server's log), so a password reset link
# shows in the terminal of `make run`; `manage.py check --deploy` warns about it.
DEFAULT_FROM_EMAIL = os.getenv("DEFAULT_FROM_EMAIL", "Banana Gallery <banana@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
if os.getenv("EMAIL_URL"):
    vars().update(email_url(os.environ["EMAIL_URL"]))
elif os.getenv("EMAIL_HOST"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = os.environ["EMAIL_HOST"]
    EMAIL_PORT = envint("EMAIL_PORT", 587)
    EMAIL_HOST_USER = os.getenv("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = os.getenv("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
    EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Media (images and thumbnails): on local disk under MEDIA_ROOT, or in a private bucket of any
# S3-compatible object store (AWS S3, MinIO, Ceph, Garage, R2, B2, ...) when STORAGE_BACKEND=s3
# or AWS_STORAGE_BUCKET_NAME is set. Keys come from AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (or AWS_S3_ACCESS_KEY_ID and AWS_S3_SECRET_ACCESS_KEY), which
# django-storages reads itself, else from boto3's own chain (an instance role, say). Any other
# dotted path names a Django storage backend of your own.
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", BASE_DIR / "media"))
MEDIA_URL = "media/"
S3_STORAGE = "storages.backends.s3.S3Storage"
AWS_STORAGE_BUCKET_NAME = os.getenv("AWS_STORAGE_BUCKET_NAME", "")
STORAGE_BACKEND = os.getenv("STORAGE_BACKEND", "") or ("s3" if AWS_STORAGE_BUCKET_NAME else "")
STORAGE_BACKEND = {"": "django.core.files.storage.FileSystemStorage", "s3": S3_STORAGE}.get(
    STORAGE_BACKEND.strip().lower(), STORAGE_BACKEND
)
MEDIA_STORAGE = {"BACKEND": STORAGE_BACKEND}
if STORAGE_BACKEND == S3_STORAGE:
    if not AWS_STORAGE_BUCKET_NAME:
        raise ValueError("STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME")
    MEDIA_STORAGE["OPTIONS"] = {
        "bucket_name": AWS_STORAGE_BUCKET_NAME,
        "endpoint_url": os.getenv("AWS_S3_ENDPOINT_URL") or None,
        "region_name": os.getenv("AWS_S3_REGION_NAME") or None,
        "addressing_style": os.getenv("AWS_S3_ADDRESSING_STYLE") or None,
        "signature_version": "s3v4",
        # Private: no ACL of our own (the bucket's, which must not be public), and every URL
        # presigned. Images are answered with a redirect to such a URL after the app's own
        # checks, so it must be short-lived: a revoked share link stops handing them out at
        # once, but one already handed out works until it expires.
        "default_acl": None,
        "querystring_auth": True,
        "querystring_expire": envint("AWS_QUERYSTRING_EXPIRE", 300),
        # Names are random (gallery.models.image_upload_to), so no HEAD request per upload
        # to look for a free one.
        "file_overwrite": True,
    }
STORAGES = {
    "default": MEDIA_STORAGE,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if envbool("STATIC_MANIFEST", False)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True
if STORAGE_BACKEND == S3_STORAGE:
    # Images load from the object store's presigned URLs, so the CSP lets images come from there.
    MEDIA_ORIGIN = s3_origin(MEDIA_STORAGE["OPTIONS"])
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["img-src"].append(MEDIA_ORIGIN)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# HTTPS. A proxy that holds the certificate says in a header that the visitor came over HTTPS
# (SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto, which it must always set, or a visitor could):
# without it request.is_secure() is false behind the proxy, and SECURE_SSL_REDIRECT would
# redirect forever. HSTS makes browsers refuse plain http for SECURE_HSTS_SECONDS.
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(os.getenv("SECURE_PROXY_SSL_HEADER", ""))
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
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
# Each form's key (the double-charge guard) is kept this many days; the daily `prune` schedule
# deletes older ones, after which a form that old sent again is a new post.
POST_KEYS_KEPT_DAYS = envint("POST_KEYS_KEPT_DAYS", 30)

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
# The limits of every user unless an admin sets others for them or their groups (ledger.models
# Allowance), 0 meaning no limit: credits a calendar month (TIME_ZONE's, renewed on the 1st),
# generations unfinished at once (queued, being sent, at the image service, saving), and images
# a day.
BUDGET_MONTHLY_CREDITS = envint("BUDGET_MONTHLY_CREDITS", 0)
MAX_PENDING_PER_USER = envint("MAX_PENDING_PER_USER", 8)
DAILY_GENERATIONS_PER_USER = envint("DAILY_GENERATIONS_PER_USER", 0)

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

# The log goes to standard error. By default it holds what a person running the site needs:
# errors, warnings and one line per generation that finished or failed (gallery.outcomes);
# LOG_LEVEL=INFO adds the queue's and the server's own lines, DEBUG everything.
LOG_LEVEL = log_level("LOG_LEVEL", "WARNING")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's warnings are mostly one line per 404 or 429.
        "django": {"level": "WARNING" if LOG_LEVEL in ("DEBUG", "INFO") else "ERROR"},
        "gallery.outcomes": {"level": LOG_LEVEL if LOG_LEVEL in ("ERROR", "CRITICAL") else "INFO"},
    },
}
