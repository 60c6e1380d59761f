"""Benchmark the zip export: the web process's peak memory and the time for 200 and 2,000 images.

    .venv/bin/python benchmarks/bench_export.py [--side 256]

A temporary SQLite file, migrated, and a temporary MEDIA_ROOT hold two users, one with 200 and
one with 2,000 finished images (PNGs of random noise, `--side` px square, about 200 KB each at
256, so the zips are about 40 and 400 MB). gunicorn serves the app with one sync worker, as in
production; each user's export is downloaded over loopback and thrown away as it arrives. The
worker's peak resident memory (VmHWM, reset through /proc/<pid>/clear_refs before each export)
is read once the export is done, beside its resident memory before. Provenance is on (the
default), so every file is rewritten on its way out. About a minute; the temporary files are
removed even on error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from common import machine_line

ROOT = Path(__file__).resolve().parent.parent
SIZES = (200, 2000)
# Settings the app reads from the environment: none may leak in from the caller's shell.
APP_VARIABLES = ("REDIS_URL", "STORAGE_BACKEND", "DEBUG", "LOG_LEVEL", "DB_CONN_MAX_AGE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def make_users(sizes: tuple[int, ...], side: int) -> dict[int, str]:
    """A user per size with that many images; returns each one's session cookie."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from tests.factories import many_done_images

    call_command("migrate", verbosity=0)
    cookies = {}
    for size in (5, *sizes):
        user = User.objects.create_user(f"user{size}")
        many_done_images(user, size, side=side)
        client = Client()
        client.force_login(user)
        cookies[size] = client.cookies["sessionid"].value
    return cookies


def export(base: str, cookie: str) -> tuple[int, float]:
    started = time.perf_counter()
    size = 0
    with requests.get(
        f"{base}/export/", cookies={"sessionid": cookie}, stream=True, timeout=600
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1024 * 1024):
            size += len(chunk)
    return size, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=256, help="image side in px")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    env = {k: v for k, v in os.environ.items() if k not in APP_VARIABLES}
    env.update(
        DJANGO_SETTINGS_MODULE="banana_site.settings",
        DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}",
        MEDIA_ROOT=str(workdir / "media"),
        SECRET_KEY="bench-export",
        ALLOWED_HOSTS="127.0.0.1",
    )
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    server = None
    try:
        print("Making the images…", flush=True)
        started = time.perf_counter()
        cookies = make_users(SIZES, args.side)
        print(f"  {sum(SIZES) + 5} images in {time.perf_counter() - started:.0f} s")
        port = free_port()
        gunicorn = Path(sys.executable).with_name("gunicorn")
        server = subprocess.Popen(
            [gunicorn, "banana_site.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1", "-t", "600"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                requests.get(f"{base}/accounts/login/", timeout=10)
                break
            except requests.RequestException:
                time.sleep(0.2)
        (worker,) = children(server.pid)
        export(base, cookies[5])  # warm up: every module an export needs is loaded
        print(machine_line())
        print(f"gunicorn, 1 sync worker; PNGs {args.side} px, provenance written into each")
        print("| images | zip MB | time s | MB/s | worker RSS before MB | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for size in SIZES:
            Path(f"/proc/{worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
            before = status_kb(worker, "VmRSS")
            total, seconds = export(base, cookies[size])
            peak = status_kb(worker, "VmHWM")
            print(
                f"| {size:,} | {total / 1e6:.0f} | {seconds:.1f} | {total / 1e6 / seconds:.0f} | "
                f"{before / 1024:.1f} | {peak / 1024:.1f} |"
            )
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
