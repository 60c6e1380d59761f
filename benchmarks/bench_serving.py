"""Benchmark the production server: 50 signed-in users posting generations at once, beside a
plain page on the same server.

    .venv/bin/python benchmarks/bench_serving.py [--users 50] [--rounds 10] [--postgres]
        [--server gunicorn|runserver] [--workers N] [--no-worker]

What `make run` starts, on free ports: the provider simulator, the web server (gunicorn with
`scripts/gunicorn.conf.py`, as the Procfile's `web`, or `runserver` to compare with the
development server) with DEBUG off, and a django-q2 cluster that submits what is posted
(`--no-worker` leaves it out). The database is a temporary SQLite file, or a fresh PostgreSQL
database with Redis as broker and cache (`--postgres`). Each user is signed in (a real session
in the database) and has its gallery's CSRF token; then all of them, started at one moment,
each post `--rounds` 1K generations through the real form (each with a form key of its own, as
a fresh page has), and between two posts fetch the login page as an anonymous visitor: the
plain page, timed in the same run under the same load. Prints p50, p95 and p99 of both and
their ratio. The per-address generation limit, the per-user rate limit and the cap on
unfinished generations are off (every user comes from 127.0.0.1 and posts fast); nothing else
is changed. The temporary files and database are removed even on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
from common import (
    create_postgres_database,
    drop_postgres_database,
    machine_line,
    percentile,
)

from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread

ROOT = Path(__file__).resolve().parent.parent

PYTHON = sys.executable
MANAGE = [PYTHON, str(ROOT / "manage.py")]
REDIS_URL = os.getenv("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
# Settings the app reads from the environment: none may leak in from the caller's shell.
APP_VARIABLES = ("REDIS_URL", "STORAGE_BACKEND", "DEBUG", "LOG_LEVEL", "AWS_STORAGE_BUCKET_NAME")
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

SESSIONS = """
import json
from django.contrib.auth.models import User
from django.test import Client
cookies = []
for i in range(%(users)d):
    user = User.objects.create_user(f"bench{i}", password="not-used")
    client = Client()
    client.force_login(user)
    cookies.append(client.cookies["sessionid"].value)
print("BENCH " + json.dumps(cookies))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(tmp: Path, simulator_url: str, database_url: str, postgres: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in APP_VARIABLES}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "banana_site.settings",
            "DATABASE_URL": database_url,
            "MEDIA_ROOT": str(tmp / "media"),
            "SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "AIGPTIMAGE_API_KEY": DEFAULT_API_KEY,
            "AIGPTIMAGE_BASE_URL": simulator_url,
            "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator_url.removeprefix("http://"),
            "RATELIMIT_GENERATE": "",
            "RATELIMIT_GENERATE_ADDRESS": "",
            "MAX_PENDING_PER_USER": "0",
        }
    )
    if postgres:
        env["REDIS_URL"] = REDIS_URL
    return env


def web_command(server: str, port: int, workers: int | None) -> list[str]:
    if server == "runserver":
        return [*MANAGE, "runserver", f"127.0.0.1:{port}", "--noreload"]
    command = [str(Path(PYTHON).parent / "gunicorn"), "banana_site.wsgi", "--bind"]
    command.append(f"127.0.0.1:{port}")
    command += ["--config", str(ROOT / "scripts" / "gunicorn.conf.py")]
    if workers:
        command += ["--workers", str(workers)]
    return command


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=20)


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


class User:
    """One signed-in user's browser: its session cookie and its gallery's CSRF token."""

    def __init__(self, base: str, session_key: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.cookies.set("sessionid", session_key)
        page = self.session.get(base + "/", timeout=30)
        page.raise_for_status()
        self.token = CSRF.search(page.text).group(1)
        self.posts: list[float] = []
        self.pages: list[float] = []
        self.statuses: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1

    def run(self, rounds: int, start: threading.Barrier) -> None:
        start.wait()
        for i in range(rounds):
            data = {
                "csrfmiddlewaretoken": self.token,
                "prompt": f"a benchmark fox number {i}",
                "aspect_ratio": "auto",
                "resolution": "1K",
                "output_format": "png",
                "count": "1",
                "key": str(uuid.uuid4()),  # the form's own, new with every page
            }
            began = time.perf_counter()
            posted = self.session.post(
                self.base + "/generations/new/",
                data=data,
                headers={"Referer": self.base + "/"},
                allow_redirects=False,
                timeout=60,
            )
            self.posts.append(time.perf_counter() - began)
            self.count(f"post {posted.status_code}")
            began = time.perf_counter()
            page = requests.get(self.base + "/accounts/login/", timeout=60)
            self.pages.append(time.perf_counter() - began)
            self.count(f"login page {page.status_code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--server", choices=("gunicorn", "runserver"), default="gunicorn")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: its config's)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL and Redis")
    parser.add_argument("--no-worker", action="store_true", help="no qcluster")
    parser.add_argument("--log", type=Path, help="keep the servers' log in this file")
    args = parser.parse_args()

    simulator = start_in_thread(SimulatorConfig(speed=0.2, seed=5, credits=10**6))
    processes: list[subprocess.Popen] = []
    database_url = ""
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "servers.log"
        try:
            if args.postgres:
                database_url = create_postgres_database()
                import redis

                redis.Redis.from_url(REDIS_URL).flushdb()
            url = database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
            env = environment(tmp, simulator.base_url, url, args.postgres)
            for step in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
                subprocess.run([*MANAGE, *step], env=env, cwd=ROOT, check=True, capture_output=True)
            made = subprocess.run(
                [*MANAGE, "shell", "-c", SESSIONS % {"users": args.users}],
                env=env, cwd=ROOT, check=True, capture_output=True, text=True,
            )  # fmt: skip
            marked = [line for line in made.stdout.splitlines() if line.startswith("BENCH ")]
            session_keys = json.loads(marked[-1].removeprefix("BENCH "))

            port = free_port()
            processes.append(start(web_command(args.server, port, args.workers), env, log))
            if not args.no_worker:
                processes.append(start([*MANAGE, "qcluster"], env, log))
            base = f"http://127.0.0.1:{port}"
            wait_for(base + "/accounts/login/")
            users = [User(base, key) for key in session_keys]
            barrier = threading.Barrier(len(users))
            threads = [threading.Thread(target=u.run, args=(args.rounds, barrier)) for u in users]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
        finally:
            for process in processes:
                stop(process)
            simulator.shutdown()
            simulator.server_close()
            if database_url:
                drop_postgres_database(database_url)
        text = log.read_text(errors="replace")
        if args.log:
            args.log.write_text(text)
        errors = [line for line in text.splitlines() if "ERROR" in line or "Error:" in line]

    posts = [s * 1000 for u in users for s in u.posts]
    pages = [s * 1000 for u in users for s in u.pages]
    statuses: dict[str, int] = {}
    for user in users:
        for what, n in user.statuses.items():
            statuses[what] = statuses.get(what, 0) + n
    database = "PostgreSQL + Redis" if args.postgres else "SQLite + ORM broker"
    worker = "no worker" if args.no_worker else "with a qcluster submitting"
    print(f"Serving benchmark: {args.server}, {database}, {worker}, DEBUG off")
    print(f"{args.users} signed-in users at once, {args.rounds} posts each, {wall:.1f} s in all")
    print()
    print(f"{'request':<28} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, values in (("generation POST", posts), ("login page GET (plain)", pages)):
        print(
            f"{name:<28} {len(values):>5} {percentile(values, 50):>8.1f} "
            f"{percentile(values, 95):>8.1f} {percentile(values, 99):>8.1f}"
        )
    print(
        f"POST / plain page: p50 {percentile(posts, 50) / percentile(pages, 50):.2f}x, "
        f"p99 {percentile(posts, 99) / percentile(pages, 99):.2f}x (goal: each within 1.5x)"
    )
    print("answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))
    if errors:
        print("server log errors (first 5):", *errors[:5], sep="\n  ")
    print(machine_line())


if __name__ == "__main__":
    main()
