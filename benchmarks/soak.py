"""Soak the pipeline: faults, killed workers and a provider outage; nothing may be lost.

    .venv/bin/python benchmarks/soak.py                     # 500 generations, about 5 minutes
    .venv/bin/python benchmarks/soak.py --generations 60 --kill-every 8 --outage 5 --json

The provider simulator runs as its own process with about 20 % of its answers or tasks
faulty (500s, 429s, 409s, slow answers, answers cut off, fail states, expired result URLs,
tasks that recordInfo forgets), saving its state to a file when it stops. The app runs one
`manage.py qcluster` on a temporary SQLite file. Generations from several users are created at
once; then the cluster's whole process group is SIGKILLed every --kill-every seconds and
started again, and once, --outage-at seconds in, the simulator is stopped for --outage seconds
and started again with its state. The run ends when every generation has ended, or
--stuck-after seconds after the last kill.

It prints: submitted, done, failed by reason, duplicated createTasks (tasks the simulator made
for one X-Request-ID beyond the first), stuck (not ended at the end), and lost (generations
missing, or done without their files). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MANAGE = [PYTHON, str(ROOT / "manage.py")]
API_KEY = "soak-key"
APP_PREFIXES = ("AIGPTIMAGE_", "SIMULATOR_", "DOWNLOAD_", "RATELIMIT_", "RUNNER_")
APP_VARIABLES = {"DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "Q_WORKERS", "DEBUG", "LOG_LEVEL"}
# About a fifth of all answers or tasks go wrong in one of the contract's ways.
FAULTS = {
    "SIMULATOR_ERROR_RATE": "0.04",
    "SIMULATOR_RATE_LIMIT_RATE": "0.03",
    "SIMULATOR_CONFLICT_RATE": "0.03",
    "SIMULATOR_SLOW_RATE": "0.02",
    "SIMULATOR_SLOW_ANSWER_SECONDS": "3",
    "SIMULATOR_BROKEN_RATE": "0.03",
    "SIMULATOR_FAIL_RATE": "0.02",
    "SIMULATOR_EXPIRED_RATE": "0.01",
    "SIMULATOR_QUERY_404_RATE": "0.01",
}

CREATE = """
import os
from django.contrib.auth.models import User
from django.db import transaction
from gallery import tasks
from gallery.models import Generation
count, users = int(os.environ["SOAK_GENERATIONS"]), int(os.environ["SOAK_USERS"])
owners = [User.objects.create_user(f"soak{i}") for i in range(users)]
with transaction.atomic():
    for n in range(count):
        Generation.objects.create(owner=owners[n % users], prompt=f"soak picture {n}")
tasks.wake_submission()
"""


REPORT = """
import json
from django.core.files.storage import default_storage
from django.db.models import Count
from gallery.models import Generation, Image
rows = Generation.objects.all()
exists = default_storage.exists
missing_files = sum(
    1 for image in Image.objects.filter(generation__status="done")
    if not all(exists(f.name) for f in (image.file, image.thumbnail, image.thumbnail_large))
)
print("REPORT " + json.dumps({
    "rows": rows.count(),
    "submitted": rows.exclude(task_id="").count(),
    "statuses": dict(rows.values_list("status").annotate(n=Count("id")).order_by()),
    "failed_by_reason": dict(
        rows.filter(status="failed").values_list("fail_code").annotate(n=Count("id")).order_by()
    ),
    "done_without_images": rows.filter(status="done", images__isnull=True).count(),
    "missing_files": missing_files,
    "request_ids": [str(r) for r in rows.values_list("request_id", flat=True)],
}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_pending(database: Path) -> int:
    """Read straight from the SQLite file: a `manage.py shell` a second would load the CPU."""
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20)
    ) as db:
        query = "SELECT count(*) FROM gallery_generation WHERE status NOT IN ('done', 'failed')"
        return db.execute(query).fetchone()[0]


def clean_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name not in APP_VARIABLES and not name.startswith(APP_PREFIXES)
    }


def shell(env: dict[str, str], code: str, marker: str) -> str:
    done = subprocess.run(
        [*MANAGE, "shell", "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    line = next(line for line in done.stdout.splitlines() if line.startswith(marker + " "))
    return line.removeprefix(marker + " ")


class Simulator:
    """The provider simulator as a process of its own, stopped and started with its state."""

    def __init__(self, port: int, state_file: Path, log: Path, speed: float) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **clean_environment(),
            **FAULTS,
            "SIMULATOR_API_KEYS": f"{API_KEY}:standard",
            "SIMULATOR_SPEED": str(speed),
            "SIMULATOR_SEED": "7",
            "SIMULATOR_STATE_FILE": str(state_file),
        }
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "simulator", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                requests.get(self.url + "/_simulator/status", timeout=1)
                return
            time.sleep(0.1)
        raise RuntimeError("the simulator did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def status(self) -> dict[str, Any]:
        return requests.get(self.url + "/_simulator/status", timeout=10).json()


class Cluster:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [*MANAGE, "qcluster"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL to the whole process group: the cluster and every worker, mid-task."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        self.kill()


def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="banana-soak-") as tmp_name:
        tmp = Path(tmp_name)
        simulator = Simulator(
            free_port(), tmp / "simulator.json", tmp / "simulator.log", args.speed
        )
        env = {
            **clean_environment(),
            "DATABASE_URL": f"sqlite:///{tmp / 'soak.sqlite3'}",
            "MEDIA_ROOT": str(tmp / "media"),
            "AIGPTIMAGE_BASE_URL": simulator.url,
            "AIGPTIMAGE_API_KEY": API_KEY,
            "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": f"127.0.0.1:{simulator.port}",
            "AIGPTIMAGE_MAX_ACTIVE_TASKS": "15",
            "AIGPTIMAGE_CREATE_RATE": "8",
            "AIGPTIMAGE_POLL_BUDGET": "40",
            "AIGPTIMAGE_POLL_INTERVAL": "0.5",
            "AIGPTIMAGE_TIMEOUT": "5",
            "AIGPTIMAGE_RETRY_BASE": "1",
            "AIGPTIMAGE_CONFLICT_WAIT": "2",
            "Q_WORKERS": "4",
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "LOG_LEVEL": "WARNING",
            "SOAK_GENERATIONS": str(args.generations),
            "SOAK_USERS": str(args.users),
        }
        cluster = Cluster(env, tmp / "qcluster.log")
        kills = 0
        try:
            subprocess.run(
                [*MANAGE, "migrate", "--noinput"], env=env, cwd=ROOT, check=True,
                capture_output=True, timeout=120,
            )  # fmt: skip
            simulator.start()
            cluster.start()
            shell(env, CREATE + "\nprint('CREATED ok')", "CREATED")
            started = time.monotonic()
            next_kill = started + args.kill_every
            outage_done = args.outage <= 0
            last_kill = started
            while True:
                now = time.monotonic()
                if not outage_done and now - started >= args.outage_at:
                    simulator.stop()
                    print(f"simulator down for {args.outage:g} s", file=sys.stderr, flush=True)
                    time.sleep(args.outage)
                    simulator.start()
                    outage_done = True
                    continue
                if now >= next_kill and kills < args.kills:
                    cluster.kill()
                    cluster.start()
                    kills += 1
                    last_kill = time.monotonic()
                    next_kill = last_kill + args.kill_every
                    print(
                        f"kill {kills} at {last_kill - started:.0f} s", file=sys.stderr, flush=True
                    )
                pending = count_pending(tmp / "soak.sqlite3")
                if args.verbose:
                    print(f"{now - started:5.0f} s: {pending} pending", file=sys.stderr)
                if pending == 0 and kills >= args.kills and outage_done:
                    break
                if kills >= args.kills and time.monotonic() - last_kill > args.stuck_after:
                    break
                time.sleep(1.0)
            elapsed = time.monotonic() - started
            report = json.loads(shell(env, REPORT, "REPORT"))
            status = simulator.status()
        finally:
            cluster.stop()
            simulator.stop()
    request_ids = set(report.pop("request_ids"))
    tasks_by_id = status["tasksByRequestId"]
    statuses = report["statuses"]
    return {
        "generations": args.generations,
        "users": args.users,
        "kills": kills,
        "outage_seconds": args.outage,
        "seconds": round(elapsed, 1),
        "submitted": report["submitted"],
        "done": statuses.get("done", 0),
        "failed": statuses.get("failed", 0),
        "failed_by_reason": report["failed_by_reason"],
        "duplicated": sum(
            len(tasks_by_id.get(r, [])) - 1 for r in request_ids if tasks_by_id.get(r)
        ),
        "stuck": sum(n for s, n in statuses.items() if s not in ("done", "failed")),
        "lost": args.generations
        - report["rows"]
        + report["done_without_images"]
        + report["missing_files"],
        "createTask_calls": status["createTask"]["calls"],
        "answers": status["answers"],
    }


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--speed", type=float, default=0.1, help="simulator speed factor")
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--outage-at", type=float, default=30.0)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--stuck-after", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--verbose", action="store_true", help="print progress every second")
    args = parser.parse_args()
    result = soak(args)
    if args.json:
        print("SOAK " + json.dumps(result))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine_line

    print(
        f"Soak: {result['generations']} generations from {result['users']} users, "
        f"{result['kills']} SIGKILLs of the worker cluster, the simulator down "
        f"{result['outage_seconds']:g} s once, ~20 % faults; {result['seconds']:.0f} s"
    )
    for name in ("submitted", "done", "failed", "duplicated", "stuck", "lost"):
        print(f"  {name}: {result[name]}")
    reasons = ", ".join(
        f"{code or '?'} {n}" for code, n in sorted(result["failed_by_reason"].items())
    )
    print(f"  failed by reason: {reasons or '-'}")
    print(f"  createTask calls: {result['createTask_calls']}; answers: {result['answers']}")
    print(machine_line())


if __name__ == "__main__":
    main()
