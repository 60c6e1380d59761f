"""Benchmark the gallery page and its htmx fragments with a big and a small gallery.

    .venv/bin/python benchmarks/bench_gallery.py

A temporary SQLite file, migrated, holds one user with 10,000 generations and one with 100
(every third done with an image row, every fifth a favourite, the newest 12 still generating).
Django's test client signs each in and times GETs of the gallery, a search, a filter, the second
page as infinite scroll asks for it, and the poller's refresh of 24 cards, counting the SQL
queries of every request. No server and no network: requests go through the WSGI handler in this
process. About 20 s; the temporary files are removed even on error.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import machine_line, percentile

REQUESTS = 30
WARMUP = 2
GALLERIES = (10_000, 100)
PENDING = 12  # the newest generations of each gallery are still at the provider
PAGE_SIZE = 24
# Settings the app reads from the environment: none may leak in from the caller's shell.
APP_VARIABLES = ("REDIS_URL", "STORAGE_BACKEND", "DEBUG", "LOG_LEVEL", "DB_CONN_MAX_AGE")


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    headers: dict[str, str]


@dataclass
class Timing:
    endpoint: Endpoint
    milliseconds: list[float]
    sql_milliseconds: list[float]
    queries: list[int]
    kilobytes: float


def add_gallery(username: str, size: int) -> Any:
    """A user with `size` generations; returns the user."""
    from django.contrib.auth.models import User

    from gallery.models import Generation, Image

    owner = User.objects.create_user(username)  # force_login needs no password

    def status(i: int) -> str:
        if i >= size - PENDING:
            return "generating"
        return "done" if i % 3 == 0 else "failed"

    generations = Generation.objects.bulk_create(
        [
            Generation(
                owner=owner,
                prompt=f"p{i} a banana astronaut floating above a neon city, oil painting",
                status=status(i),
                is_favorite=i % 5 == 0,
                fail_message="The image service could not make this image."
                if status(i) == "failed"
                else "",
            )
            for i in range(size)
        ],
        batch_size=2000,
    )
    Image.objects.bulk_create(
        [
            Image(
                generation=g,
                file=f"images/{owner.pk}/{g.pk}.png",
                thumbnail=f"thumbs/{owner.pk}/{g.pk}.webp",
                width=1024,
                height=1024,
                bytes=1_500_000,
                format="PNG",
                sha256="0" * 64,
            )
            for g in generations
            if g.status == "done"
        ],
        batch_size=2000,
    )
    return owner


def endpoints(owner: Any) -> list[Endpoint]:
    from gallery.models import Generation

    newest = list(
        Generation.objects.owned_by(owner).order_by("-id").values_list("pk", flat=True)[:PAGE_SIZE]
    )
    htmx = {"HX-Request": "true"}
    ids = ",".join(str(pk) for pk in newest)
    return [
        Endpoint("gallery /", "/", {}),
        Endpoint("search ?q=p12", "/?q=p12", {}),
        Endpoint("done + favourites", "/?status=done&favorites=on", {}),
        Endpoint("page 2 (htmx)", f"/?before={newest[-1]}", htmx),
        Endpoint("updates, 24 ids", f"/generations/updates/?ids={ids}", htmx),
    ]


class SqlTimer:
    """An execute wrapper that adds up the seconds spent in the database driver."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started


def measure(client: Any, endpoint: Endpoint) -> Timing:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(WARMUP):
        client.get(endpoint.path, headers=endpoint.headers)
    timing = Timing(endpoint, [], [], [], 0.0)
    for _ in range(REQUESTS):
        sql = SqlTimer()
        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(sql):
            started = time.perf_counter()
            response = client.get(endpoint.path, headers=endpoint.headers)
            elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {endpoint.path} answered {response.status_code}")
        timing.milliseconds.append(elapsed * 1000)
        timing.sql_milliseconds.append(sql.seconds * 1000)
        timing.queries.append(len(captured))
        timing.kilobytes = len(response.content) / 1024
    return timing


def table(size: int, timings: list[Timing]) -> list[str]:
    rows = [
        f"Gallery of {size:,} generations ({REQUESTS} GETs each after {WARMUP} warm-up; ms; "
        "SQL = time inside cursor.execute)",
        f"{'request':<20} {'p50':>7} {'p95':>7} {'SQL p50':>8} {'queries':>8} {'KB':>6}",
    ]
    for t in timings:
        low, high = min(t.queries), max(t.queries)
        queries = str(low) if low == high else f"{low}-{high}"
        rows.append(
            f"{t.endpoint.name:<20} {percentile(t.milliseconds, 50):>7.1f} "
            f"{percentile(t.milliseconds, 95):>7.1f} {percentile(t.sql_milliseconds, 50):>8.1f} "
            f"{queries:>8} {t.kilobytes:>6.0f}"
        )
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp:
        for name in APP_VARIABLES:
            os.environ.pop(name, None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "banana_site.settings"
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'gallery.sqlite3'}"
        os.environ["MEDIA_ROOT"] = str(Path(tmp) / "media")
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connections
        from django.test import Client

        try:
            call_command("migrate", verbosity=0, interactive=False)
            settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
            lines: list[str] = []
            for number, size in enumerate(GALLERIES):
                started = time.perf_counter()
                owner = add_gallery(f"bench{number}", size)
                filled = time.perf_counter() - started
                client = Client()
                client.force_login(owner)
                timings = [measure(client, endpoint) for endpoint in endpoints(owner)]
                lines += [*table(size, timings), f"(filled in {filled:.1f} s)", ""]
        finally:
            connections.close_all()
    print("Gallery benchmark: django.test.Client, SQLite file, DEBUG off")
    print()
    print("\n".join(lines).rstrip())
    print(machine_line())


if __name__ == "__main__":
    main()
