"""Benchmark the whole background pipeline as `make run` runs it.

    .venv/bin/python benchmarks/bench_pipeline.py

Per run: a temporary SQLite file, `manage.py migrate`, the provider simulator in a thread of this
process (speed 0.1: a 1K task takes about 1.5 s), and one `manage.py qcluster` subprocess with
3 workers. One long-lived `manage.py shell -c` helper creates 40 generations over 4 users, wakes
submission, and samples the database every 0.25 s until all are done or failed; meanwhile this
process samples the simulator's active tasks.

Two runs: the defaults (a "basic" key, AIGPTIMAGE_MAX_ACTIVE_TASKS=5) and a "standard" key
(15 active tasks allowed) with AIGPTIMAGE_MAX_ACTIVE_TASKS=10. Each run is capped at RUN_CAP
seconds; the whole script takes about a minute. Everything talks to 127.0.0.1 only, and the
temporary files and subprocesses are removed even on error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from common import machine_line, percentile

from simulator import SimulatorConfig, SimulatorServer, start_in_thread

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
API_KEY = "bench-key"
SPEED = 0.1
GENERATIONS = 40
USERS = 4
RUN_CAP = 45.0  # seconds for one run's 40 generations (about 15 s when all goes well)
CLUSTER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
LOG_LINES_SHOWN = 10
# Settings the app reads from the environment: none may leak in from the caller's shell.
APP_VARIABLES = {
    "DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "STORAGE_BACKEND", "Q_WORKERS", "Q_SYNC",
    "RUNNER_SECONDS", "DEBUG", "LOG_LEVEL", "DB_CONN_MAX_AGE", "THUMBNAIL_SIZE",
}  # fmt: skip
APP_PREFIXES = ("AIGPTIMAGE_", "SIMULATOR_", "DOWNLOAD_", "RATELIMIT_")

# Run by `manage.py shell -c` in the run's environment. Its last line is "BENCH {json}"; Django's
# shell prints an "objects imported automatically" line before it.
PROBE = """
import json, os, time
from django.contrib.auth.models import User
from django.db import transaction
from gallery import tasks
from gallery.models import Generation

count, users_count = int(os.environ["BENCH_GENERATIONS"]), int(os.environ["BENCH_USERS"])
# No password: hashing one takes longer than submitting a generation.
users = [User.objects.create_user(f"bench{i}") for i in range(users_count)]
with transaction.atomic():
    for n in range(count):
        Generation.objects.create(
            owner=users[n % users_count], prompt=f"benchmark picture {n}: a banana on a bicycle"
        )
tasks.wake_submission()
deadline = time.monotonic() + float(os.environ["BENCH_CAP"])
peak = 0
while True:
    in_flight = Generation.objects.in_flight().count()
    peak = max(peak, in_flight)
    if not Generation.objects.pending().exists() or time.monotonic() > deadline:
        break
    time.sleep(0.25)
rows = list(Generation.objects.order_by("id").values(
    "status", "created_at", "submitted_at", "provider_completed_at", "finished_at",
    "poll_count", "fail_code", "fail_message",
))
finished = [r["finished_at"] for r in rows if r["finished_at"]]
def seconds(row, start, end):
    if row[start] is None or row[end] is None:
        return None
    return (row[end] - row[start]).total_seconds()
print("BENCH " + json.dumps({
    "peak_in_flight": peak,
    "statuses": [r["status"] for r in rows],
    "total": (max(finished) - min(r["created_at"] for r in rows)).total_seconds()
    if finished else None,
    "latencies": [seconds(r, "created_at", "finished_at") for r in rows],
    "queue_waits": [seconds(r, "created_at", "submitted_at") for r in rows],
    "after_completion": [seconds(r, "provider_completed_at", "finished_at") for r in rows],
    "poll_counts": [r["poll_count"] for r in rows],
    "failures": [[r["fail_code"], r["fail_message"]] for r in rows if r["status"] == "failed"],
}), flush=True)
"""


@dataclass(frozen=True)
class Run:
    name: str
    tier: str
    max_active: int


RUNS = (
    Run("basic key, 5 active (make run)", "basic", 5),
    Run("standard key, 10 active", "standard", 10),
)


@dataclass
class Result:
    run: Run
    probe: dict[str, Any]
    simulator: dict[str, Any]
    provider_peak: int
    log_problems: list[str]
    stop_seconds: float


def app_environment(tmp: Path, simulator: SimulatorServer, run: Run) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in APP_VARIABLES and not name.startswith(APP_PREFIXES)
    }
    return {
        **inherited,
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "AIGPTIMAGE_BASE_URL": simulator.base_url,
        "AIGPTIMAGE_API_KEY": API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator.base_url.removeprefix("http://"),
        "AIGPTIMAGE_MAX_ACTIVE_TASKS": str(run.max_active),
        "AIGPTIMAGE_POLL_INTERVAL": "0.5",
        "Q_WORKERS": "4",
        "DEBUG": "0",
        "LOG_LEVEL": "INFO",
        "BENCH_GENERATIONS": str(GENERATIONS),
        "BENCH_USERS": str(USERS),
        "BENCH_CAP": str(RUN_CAP),
    }


def wait_for_cluster(cluster: subprocess.Popen, log_path: Path) -> None:
    """Wait until django-q2 logs that the cluster runs, so that the clock starts on real work."""
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT
    while time.monotonic() < deadline:
        if cluster.poll() is not None:
            raise RuntimeError(f"qcluster exited with {cluster.returncode}:\n{tail(log_path)}")
        if "running." in log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"qcluster did not start within {CLUSTER_START_TIMEOUT:g} s")


def stop_cluster(cluster: subprocess.Popen) -> float:
    """SIGINT to the main process (it stops its workers cleanly), a kill of its group if hung.

    Returns the seconds the cluster took to stop.
    """
    started = time.monotonic()
    if cluster.poll() is None:
        cluster.send_signal(signal.SIGINT)
        try:
            cluster.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print("qcluster ignored SIGINT; killing its process group", file=sys.stderr)
    # The cluster runs in a session of its own: anything left in its group is one of its workers.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cluster.pid, signal.SIGKILL)
    cluster.wait(timeout=STOP_TIMEOUT)
    return time.monotonic() - started


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def sample_provider(simulator: SimulatorServer, stop: threading.Event, peak: list[int]) -> None:
    """The most tasks the simulator has had pending at once, sampled every 50 ms."""
    while not stop.wait(0.05):
        tasks = simulator.simulator.status()["tasks"]
        peak[0] = max(peak[0], tasks["waiting"] + tasks["queuing"] + tasks["generating"])


def log_problems(log_path: Path) -> list[str]:
    """Warnings, errors, and the app's notes about a 409 or 429 from createTask."""
    keep = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "createTask 409", "createTask 429")
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if any(word in line for word in keep)]


def run_once(run: Run) -> Result:
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp_name:
        tmp = Path(tmp_name)
        simulator = start_in_thread(
            SimulatorConfig(api_keys={API_KEY: run.tier}, speed=SPEED, seed=11)
        )
        stop_sampling = threading.Event()
        provider_peak = [0]
        sampler = threading.Thread(
            target=sample_provider, args=(simulator, stop_sampling, provider_peak), daemon=True
        )
        cluster: subprocess.Popen | None = None
        probe: subprocess.Popen | None = None
        stop_seconds = 0.0
        log_path = tmp / "qcluster.log"
        try:
            env = app_environment(tmp, simulator, run)
            migrate = subprocess.run(
                [*MANAGE, "migrate", "--noinput"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if migrate.returncode != 0:
                raise RuntimeError(f"migrate failed:\n{migrate.stderr}")
            with log_path.open("w") as log:
                cluster = subprocess.Popen(
                    [*MANAGE, "qcluster"],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_for_cluster(cluster, log_path)
            sampler.start()
            probe = subprocess.Popen(
                [*MANAGE, "shell", "-c", PROBE],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            out, err = probe.communicate(timeout=RUN_CAP + 30)
            if probe.returncode != 0:
                raise RuntimeError(f"the probe failed:\n{err}")
            marked = [line for line in out.splitlines() if line.startswith("BENCH ")]
            report = json.loads(marked[-1].removeprefix("BENCH "))
        except BaseException:
            if log_path.exists():
                print(f"qcluster log, last lines:\n{tail(log_path)}", file=sys.stderr)
            raise
        finally:
            if probe is not None and probe.poll() is None:
                probe.kill()
                probe.wait()
            if cluster is not None:
                stop_seconds = stop_cluster(cluster)
                print(f"qcluster stopped {stop_seconds:.1f} s after SIGINT", file=sys.stderr)
            stop_sampling.set()
            if sampler.is_alive():
                sampler.join()
            status = simulator.simulator.status()
            simulator.shutdown()
            simulator.server_close()
        problems = log_problems(log_path)
        return Result(run, report, status, provider_peak[0], problems, stop_seconds)


def summary(values: list[float | None], how: str = "mean", digits: int = 1) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    value = statistics.fmean(known) if how == "mean" else percentile(known, 95)
    return f"{value:.{digits}f}"


def figures(result: Result) -> dict[str, str]:
    probe, status = result.probe, result.simulator
    finished = sum(1 for s in probe["statuses"] if s in ("done", "failed"))
    answers = status["answers"]
    total = probe["total"]
    return {
        "finished / created": f"{finished} / {GENERATIONS}",
        "failed": str(sum(1 for s in probe["statuses"] if s == "failed")),
        "wall time, first created to last finished (s)": f"{total:.1f}" if total else "-",
        "generations per minute": f"{finished / total * 60:.0f}" if total else "-",
        "created to finished, mean (s)": summary(probe["latencies"]),
        "created to finished, p95 (s)": summary(probe["latencies"], "p95"),
        "created to submitted, mean (s)": summary(probe["queue_waits"]),
        "provider completion to finished, mean (s)": summary(probe["after_completion"], digits=2),
        "peak in flight (DB, sampled every 0.25 s)": str(probe["peak_in_flight"]),
        "peak active at the provider (every 50 ms)": str(result.provider_peak),
        "createTask calls per generation": f"{status['createTask']['calls'] / GENERATIONS:.2f}",
        "recordInfo calls per generation": f"{status['recordInfo']['calls'] / GENERATIONS:.2f}",
        "polls recorded per generation (DB)": summary(probe["poll_counts"], digits=2),
        "downloads per generation": f"{status['downloads'] / GENERATIONS:.2f}",
        "409 / 429 answers": f"{answers.get('409', 0)} / {answers.get('429', 0)}",
        "other non-200 answers": str(
            sum(n for code, n in answers.items() if code not in ("200", "409", "429"))
        ),
        "qcluster stop after SIGINT (s)": f"{result.stop_seconds:.1f}",
        "worker log warnings and errors": str(len(result.log_problems)),
    }


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # A SIGTERM must run the `finally` blocks too, so that no qcluster outlives the benchmark.
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    results = []
    for number, run in enumerate(RUNS, 1):
        print(f"run {number}/{len(RUNS)}: {run.name}…", file=sys.stderr, flush=True)
        results.append(run_once(run))
    tables = [figures(result) for result in results]
    width = max(len(label) for label in tables[0])
    print(f"Pipeline benchmark: {GENERATIONS} 1K generations over {USERS} users, SQLite file,")
    print(
        f"one qcluster (Q_WORKERS=3), simulator speed {SPEED}, AIGPTIMAGE_POLL_INTERVAL=0.5, "
        "other settings at their defaults"
    )
    print()
    print(f"{'':<{width}}  " + "  ".join(f"{r.run.name:>30}" for r in results))
    for label in tables[0]:
        print(f"{label:<{width}}  " + "  ".join(f"{t[label]:>30}" for t in tables))
    for result in results:
        for code, message in result.probe["failures"]:
            print(f"failed in '{result.run.name}': [{code}] {message}")
        for line in result.log_problems[:LOG_LINES_SHOWN]:
            print(f"worker log in '{result.run.name}': {line}")
        if len(result.log_problems) > LOG_LINES_SHOWN:
            print(f"… and {len(result.log_problems) - LOG_LINES_SHOWN} more such log lines")
    print(machine_line())


if __name__ == "__main__":
    main()
