"""Benchmark the background pipeline as it runs in production: real qcluster processes, the
provider simulator over loopback HTTP, renders with a lognormal spread.

    .venv/bin/python benchmarks/bench_pipeline.py basic           # (a) calls per image, latency
    .venv/bin/python benchmarks/bench_pipeline.py scale           # (b) a 300-active tier, SQLite
    .venv/bin/python benchmarks/bench_pipeline.py scale --postgres --clusters 2

(a) `basic`: the basic tier (5 active, 3 createTask/s paced), 1K renders of a median 12 s
    (lognormal, sigma 0.25) at real speed, 3 users. A warm-up of 40 generations gives the poll
    planner its history; the next 60 are measured: provider calls per image, completion to
    stored, the longest stretch without a recordInfo while tasks were in flight, slot use.
(b) `scale`: a tier of 300 active tasks, 100 createTask/s and 500 recordInfo/s; 1,500
    generations from 50 users, renders of a median 12 s; images per minute against the ideal
    (300 slots / 12 s = 1,500 a minute), slot use while work is queued, 409/429 answers and
    fairness (most / fewest images per user at half done).

A temporary SQLite file (or a fresh PostgreSQL database and Redis db 13 with --postgres),
`manage.py migrate`, one or more `manage.py qcluster` processes, and a `manage.py shell` probe
that creates the generations and samples the database and the simulator every 0.25 s. Only
127.0.0.1 is contacted; subprocesses and temporary files are removed even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from common import (
    create_postgres_database,
    drop_postgres_database,
    machine_line,
    percentile,
)

from simulator import SimulatorConfig, Tier, start_in_thread

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
API_KEY = "bench-key"
REDIS_URL = os.getenv("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
# Settings the app reads from the environment: none may leak in from the caller's shell.
APP_VARIABLES = {
    "DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "STORAGE_BACKEND", "Q_WORKERS", "Q_SYNC",
    "RUNNER_SECONDS", "RUNNER_LEASE", "PIPELINE_RUNNERS", "DEBUG", "LOG_LEVEL",
    "DB_CONN_MAX_AGE", "THUMBNAIL_HEIGHT",
}  # fmt: skip
APP_PREFIXES = ("AIGPTIMAGE_", "SIMULATOR_", "DOWNLOAD_", "RATELIMIT_", "PRICE_")


@dataclass(frozen=True)
class Scenario:
    name: str
    tier: str
    max_active: int
    create_rate: float
    poll_budget: int
    users: int
    warmup: int
    generations: int
    cap_seconds: float
    workers: int


SCENARIOS = {
    "basic": Scenario("basic", "basic", 5, 3.0, 15, 3, 40, 60, 600.0, 4),
    "scale": Scenario("scale", "bench300", 300, 95.0, 450, 50, 0, 1500, 600.0, 6),
}

# Run by `manage.py shell -c`: creates the work, samples until it is done, prints "BENCH {json}".
PROBE = """
import json, os, time
import requests
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Min
from django.utils import timezone
from gallery import tasks
from gallery.models import Generation

warmup, count = int(os.environ["BENCH_WARMUP"]), int(os.environ["BENCH_GENERATIONS"])
users_count, cap = int(os.environ["BENCH_USERS"]), float(os.environ["BENCH_CAP"])
status_url = os.environ["AIGPTIMAGE_BASE_URL"] + "/_simulator/status"
users = [User.objects.create_user(f"bench{i}") for i in range(users_count)]

def create(n, label):
    with transaction.atomic():
        made = [Generation.objects.create(owner=users[i % users_count],
                prompt=f"{label} picture {i}: a banana on a bicycle") for i in range(n)]
    tasks.wake_submission()
    return [g.pk for g in made]

def wait_done(ids, deadline):
    while Generation.objects.filter(pk__in=ids).pending().exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True

if warmup:
    wait_done(create(warmup, "warm-up"), time.monotonic() + cap)
start_status = requests.get(status_url, timeout=5).json()
ids = create(count, "measured")
started = time.monotonic()
deadline = started + cap
samples, half = [], None
while True:
    now = timezone.now()
    rows = Generation.objects.filter(pk__in=ids)
    by_status = dict(rows.values_list("status").annotate(n=Count("id")).order_by())
    overdue = rows.polling().filter(lease_until__isnull=True).aggregate(m=Min("next_poll_at"))["m"]
    sim = requests.get(status_url, timeout=5).json()
    active = sum(sim["tasks"][s] for s in ("waiting", "queuing", "generating"))
    ended = by_status.get("done", 0) + by_status.get("failed", 0)
    samples.append({
        "t": time.monotonic() - started,
        "queued": by_status.get("queued", 0),
        "polling": sum(by_status.get(s, 0) for s in ("waiting", "queuing", "generating")),
        "active": active,
        "record_calls": sim["recordInfo"]["calls"],
        "overdue": (now - overdue).total_seconds() if overdue else 0.0,
        "ended": ended,
    })
    if half is None and ended >= count / 2:
        half = dict(rows.filter(status="done").values_list("owner").annotate(n=Count("id"))
                    .order_by())
        half = [half.get(u.pk, 0) for u in users]
    if ended == count or time.monotonic() > deadline:
        break
    time.sleep(0.25)
end_status = requests.get(status_url, timeout=5).json()
rows = list(Generation.objects.filter(pk__in=ids).values(
    "status", "created_at", "submitted_at", "provider_completed_at", "finished_at",
    "last_polled_at", "poll_count", "fail_code", "fail_message"))
def seconds(row, start, end):
    if row[start] is None or row[end] is None:
        return None
    return (row[end] - row[start]).total_seconds()
done = [r for r in rows if r["status"] == "done"]
first = min(r["created_at"] for r in rows)
last = max((r["finished_at"] for r in rows if r["finished_at"]), default=None)
print("BENCH " + json.dumps({
    "statuses": [r["status"] for r in rows],
    "wall": (last - first).total_seconds() if last else None,
    "after_completion": [seconds(r, "provider_completed_at", "finished_at") for r in done],
    "seen_after": [seconds(r, "provider_completed_at", "last_polled_at") for r in done],
    "stored_after": [seconds(r, "last_polled_at", "finished_at") for r in done],
    "polls": [r["poll_count"] for r in done],
    "failures": [[r["fail_code"], r["fail_message"]] for r in rows if r["status"] == "failed"],
    "samples": samples,
    "half": half,
    "calls": {
        "create": end_status["createTask"]["calls"] - start_status["createTask"]["calls"],
        "record": end_status["recordInfo"]["calls"] - start_status["recordInfo"]["calls"],
    },
    "answers": {k: v - start_status["answers"].get(k, 0) for k, v in end_status["answers"].items()},
    "duplicates": sum(len(t) - 1 for t in end_status["tasksByRequestId"].values() if len(t) > 1),
}), flush=True)
"""


def app_environment(tmp: Path, base_url: str, scenario: Scenario, args) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in APP_VARIABLES and not name.startswith(APP_PREFIXES)
    }
    env = {
        **inherited,
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "AIGPTIMAGE_BASE_URL": base_url,
        "AIGPTIMAGE_API_KEY": API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": base_url.removeprefix("http://"),
        "AIGPTIMAGE_MAX_ACTIVE_TASKS": str(scenario.max_active),
        "AIGPTIMAGE_CREATE_RATE": str(scenario.create_rate),
        "AIGPTIMAGE_POLL_BUDGET": str(scenario.poll_budget),
        "Q_WORKERS": str(args.workers or scenario.workers),
        "PIPELINE_RUNNERS": str(args.runners),
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "LOG_LEVEL": "INFO",
        "BENCH_WARMUP": str(scenario.warmup),
        "BENCH_GENERATIONS": str(scenario.generations),
        "BENCH_USERS": str(scenario.users),
        "BENCH_CAP": str(scenario.cap_seconds),
    }
    if args.latency:
        env["AIGPTIMAGE_POLL_LATENCY"] = str(args.latency)
    if args.postgres:
        env["DATABASE_URL"] = args.database_url
        env["REDIS_URL"] = REDIS_URL
    return env


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def start_cluster(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("a") as log:
        return subprocess.Popen(
            [*MANAGE, "qcluster"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_cluster(cluster: subprocess.Popen) -> None:
    if cluster.poll() is None:
        cluster.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cluster.pid, signal.SIGKILL)
    cluster.wait(timeout=20)


def run(scenario: Scenario, args) -> dict[str, Any]:
    config = SimulatorConfig(
        api_keys={API_KEY: scenario.tier},
        extra_tiers={"bench300": Tier(100, 6000, 500, 30000, 300)},
        durations={"1K": 12.0, "2K": 35.0, "4K": 60.0},
        render_sigma=args.sigma,
        seed=11,
    )
    simulator = start_in_thread(config)
    clusters: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log_path = tmp / "qcluster.log"
        if args.postgres:
            args.database_url = create_postgres_database()
            flush_redis()
        try:
            env = app_environment(tmp, simulator.base_url, scenario, args)
            subprocess.run(
                [*MANAGE, "migrate", "--noinput"], env=env, cwd=ROOT, check=True,
                capture_output=True, timeout=120,
            )  # fmt: skip
            clusters = [start_cluster(env, log_path) for _ in range(args.clusters)]
            probe = subprocess.run(
                [*MANAGE, "shell", "-c", PROBE], env=env, cwd=ROOT, capture_output=True,
                text=True, timeout=2 * scenario.cap_seconds + 120,
            )  # fmt: skip
            if probe.returncode != 0:
                raise RuntimeError(f"the probe failed:\n{probe.stderr[-3000:]}")
            marked = [line for line in probe.stdout.splitlines() if line.startswith("BENCH ")]
            report = json.loads(marked[-1].removeprefix("BENCH "))
        finally:
            for cluster in clusters:
                stop_cluster(cluster)
            simulator.shutdown()
            simulator.server_close()
            if args.postgres:
                drop_postgres_database(args.database_url)
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        report["log_errors"] = [line for line in log.splitlines() if " ERROR " in line][:5]
    return report


def longest_silence(samples: list[dict]) -> float:
    """The longest stretch in which tasks were at the provider, some poll was overdue by more
    than a second, and no recordInfo call went out."""
    longest, since = 0.0, None
    for previous, sample in zip(samples, samples[1:], strict=False):
        stalled = (
            sample["polling"] > 0
            and sample["overdue"] > 1.0
            and sample["record_calls"] == previous["record_calls"]
        )
        if stalled:
            since = previous["t"] if since is None else since
            longest = max(longest, sample["t"] - since)
        else:
            since = None
    return longest


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {percentile(values, 50):.2f}, p95 {percentile(values, 95):.2f}"


def report_lines(scenario: Scenario, args, r: dict[str, Any]) -> list[str]:
    done = sum(1 for s in r["statuses"] if s == "done")
    failed = sum(1 for s in r["statuses"] if s == "failed")
    calls = r["calls"]["create"] + r["calls"]["record"]
    latency = [v for v in r["after_completion"] if v is not None]
    queued = [s for s in r["samples"] if s["queued"] > 0]
    slot_use = (
        sum(min(1.0, s["active"] / scenario.max_active) for s in queued) / len(queued)
        if queued
        else None
    )
    wall = r["wall"]
    ideal = scenario.max_active / 12.0 * 60
    half = [n for n in (r["half"] or []) if n is not None]
    fairness = max(half) / max(1, min(half)) if half else None
    answers = r["answers"]
    lines = [
        f"generations: {done} done, {failed} failed of {scenario.generations}",
        f"provider calls per image: {calls / max(1, done):.2f} "
        f"({r['calls']['create'] / max(1, done):.2f} createTask + "
        f"{r['calls']['record'] / max(1, done):.2f} recordInfo)",
        "completion to stored (s): "
        + (
            f"p50 {percentile(latency, 50):.2f}, p95 {percentile(latency, 95):.2f}, "
            f"max {max(latency):.2f}"
            if latency
            else "-"
        ),
        "of which seen by a poll (s): "
        + _spread([v for v in r["seen_after"] if v is not None])
        + "; then stored (s): "
        + _spread([v for v in r["stored_after"] if v is not None]),
        f"longest polling stall while tasks were in flight: {longest_silence(r['samples']):.1f} s",
        f"slot use while work was queued: {slot_use:.2f}" if slot_use is not None else "",
        f"409 / 429 answers: {answers.get('409', 0)} / {answers.get('429', 0)}",
        f"duplicated tasks: {r['duplicates']}",
    ]
    if wall:
        lines.append(
            f"images per minute: {done / wall * 60:.0f} (ideal {ideal:.0f}, "
            f"{done / wall * 60 / ideal:.2f} of it); wall {wall:.1f} s"
        )
    if fairness is not None:
        lines.append(f"fairness at half done (most / fewest per user): {fairness:.2f}")
    for code, message in r["failures"][:5]:
        lines.append(f"failed: [{code}] {message}")
    lines += [f"worker log: {line}" for line in r["log_errors"]]
    return [line for line in lines if line]


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL + Redis broker")
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="Q_WORKERS per cluster")
    parser.add_argument("--runners", type=int, default=1, help="PIPELINE_RUNNERS")
    parser.add_argument("--sigma", type=float, default=0.25, help="lognormal render spread")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="AIGPTIMAGE_POLL_LATENCY (default: the app's)"
    )
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario]
    database = "PostgreSQL + Redis" if args.postgres else "SQLite + ORM broker"
    print(
        f"Pipeline benchmark '{scenario.name}': {scenario.generations} 1K generations from "
        f"{scenario.users} users, tier {scenario.tier} ({scenario.max_active} active), "
        f"{database}, {args.clusters} cluster(s) x {args.workers or scenario.workers} workers, "
        f"{args.runners} runner(s) of each kind, renders median 12 s, sigma {args.sigma}",
        flush=True,
    )
    for line in report_lines(scenario, args, run(scenario, args)):
        print("  " + line)
    print(machine_line())


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
