"""Benchmark the gallery page and its htmx fragments with a big and a small gallery.

    .venv/bin/python benchmarks/bench_gallery.py [--sizes 100,100000] [--postgres]

A temporary SQLite file, migrated, holds one user per size (10,000 and 100 generations unless
`--sizes` says otherwise; every third done with an image row, every fifth a favourite, the
newest 12 still generating, 30 spread evenly with "lighthouse" in the prompt). `--postgres`
uses a new database on the server at BENCH_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/
postgres) instead, dropped at the end. Django's test client signs each user in and times GETs
of the gallery, three searches (one in 1 % of a big gallery's prompts, far from the newest; one
in every prompt; one in 30 of each), two filters, the second page as infinite scroll asks for
it, and the poller's refresh of 24 cards, counting the SQL queries of every request; the
galleries take turns, request by request. No server and no network: requests go through the
WSGI handler in this process. About 30 s at the default sizes, 3-5 minutes with 100,000; the
temporary files and database are removed even on error.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import machine_line, percentile, postgres_database

# The checkout this file is in, not whichever one the virtualenv installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REQUESTS = 40
WARMUP = 2
GALLERIES = "10000,100"
PENDING = 12  # the newest generations of each gallery are still at the provider
PAGE_SIZE = 24
# Prompts spread evenly through every gallery mention a lighthouse: a search that fills a page
# in each, rare in a big gallery and common in a small one.
MARKED = 30
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
                prompt=f"p{i} a banana astronaut floating above a neon city, oil painting"
                + (", a lighthouse" if i % max(1, size // MARKED) == 0 else ""),
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
        Endpoint("search ?q=neon", "/?q=neon", {}),
        Endpoint("search ?q=lighthouse", "/?q=lighthouse", {}),
        Endpoint("done + favourites", "/?status=done&favorites=on", {}),
        Endpoint("in progress", "/?status=pending", {}),
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


def get(client: Any, endpoint: Endpoint, timing: Timing) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

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


def measure(galleries: list[tuple[Any, list[Endpoint]]]) -> list[list[Timing]]:
    """Time each request of every gallery, the galleries' turns interleaved, so that a machine
    busy with other work slows each size alike (the figures that matter are their ratios)."""
    timings = [[Timing(endpoint, [], [], [], 0.0) for endpoint in ends] for _, ends in galleries]
    for number in range(len(galleries[0][1])):
        for client, ends in galleries:
            for _ in range(WARMUP):
                client.get(ends[number].path, headers=ends[number].headers)
        for _ in range(REQUESTS):
            for (client, ends), timing in zip(galleries, timings, strict=True):
                get(client, ends[number], timing[number])
    return timings


def table(size: int, timings: list[Timing]) -> list[str]:
    rows = [
        f"Gallery of {size:,} generations ({REQUESTS} GETs each after {WARMUP} warm-up; ms; "
        "SQL = time inside cursor.execute)",
        f"{'request':<22} {'p50':>7} {'p95':>7} {'SQL p50':>8} {'queries':>8} {'KB':>6}",
    ]
    for t in timings:
        low, high = min(t.queries), max(t.queries)
        queries = str(low) if low == high else f"{low}-{high}"
        rows.append(
            f"{t.endpoint.name:<22} {percentile(t.milliseconds, 50):>7.1f} "
            f"{percentile(t.milliseconds, 95):>7.1f} {percentile(t.sql_milliseconds, 50):>8.1f} "
            f"{queries:>8} {t.kilobytes:>6.0f}"
        )
    return rows


def ratios(sizes: list[int], measured: list[list[Timing]]) -> list[str]:
    """Each request's p50 in the first gallery over its p50 in the last."""
    if len(sizes) < 2:
        return []
    rows = [f"p50 with {sizes[0]:,} / p50 with {sizes[-1]:,} generations"]
    for big, small in zip(measured[0], measured[-1], strict=True):
        ratio = percentile(big.milliseconds, 50) / percentile(small.milliseconds, 50)
        rows.append(f"{big.endpoint.name:<22} {ratio:>7.2f}x")
    return [*rows, ""]


@contextmanager
def database(tmp: Path, postgres: bool) -> Iterator[str]:
    """The URL of an empty database: a file in `tmp`, or a new PostgreSQL database that is
    dropped afterwards, whoever is still connected."""
    if not postgres:
        yield f"sqlite:///{tmp / 'gallery.sqlite3'}"
        return
    with postgres_database() as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default=GALLERIES, help="generations per user, comma-separated (%(default)s)"
    )
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp,
        database(Path(tmp), args.postgres) as url,
    ):
        for name in APP_VARIABLES:
            os.environ.pop(name, None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "banana_site.settings"
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
        os.environ["DATABASE_URL"] = url
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
            galleries, filled = [], []
            for number, size in enumerate(sizes):
                started = time.perf_counter()
                owner = add_gallery(f"bench{number}", size)
                if args.postgres:
                    # As autovacuum would soon after a big import: the planner needs the
                    # statistics to choose the indexes.
                    with connections["default"].cursor() as cursor:
                        cursor.execute("ANALYZE")
                filled.append(time.perf_counter() - started)
                client = Client()
                client.force_login(owner)
                galleries.append((client, endpoints(owner)))
            lines: list[str] = []
            measured = measure(galleries)
            for size, timings, seconds in zip(sizes, measured, filled, strict=True):
                lines += [*table(size, timings), f"(filled in {seconds:.1f} s)", ""]
            lines += ratios(sizes, measured)
        finally:
            connections.close_all()
    kind = "PostgreSQL database" if args.postgres else "SQLite file"
    print(f"Gallery benchmark: django.test.Client, {kind}, DEBUG off")
    print()
    print("\n".join(lines).rstrip())
    print(machine_line())


if __name__ == "__main__":
    main()
