"""What every benchmark does the same way: percentiles, the line naming the machine, and a
PostgreSQL database of its own."""

from __future__ import annotations

import os
import platform
import statistics
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

# The server on which benchmarks make (and drop) PostgreSQL databases of their own.
POSTGRES_URL = os.getenv("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def machine_line() -> str:
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    load = ", ".join(f"{n:.2f}" for n in os.getloadavg())
    return (
        f"{now} on {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {load}"
    )


def percentile(values: list[float], pct: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def create_postgres_database() -> str:
    """The URL of a new, empty PostgreSQL database on POSTGRES_URL's server."""
    import psycopg

    name = f"banana_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    """Drop a database made by create_postgres_database, whoever is still connected."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_database() -> Iterator[str]:
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)
