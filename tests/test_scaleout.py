"""The scale-out path: PostgreSQL, django-q2's Redis broker, and two worker clusters at once.

Two `qcluster` processes (as on two hosts) share one database and one broker. Together they
must still never hold more tasks at the provider than AIGPTIMAGE_MAX_ACTIVE_TASKS, make one
provider task per generation, and finish everything. The simulator's key is on the "basic"
tier, whose limit is the app's 5 active tasks: one task too many would come back as a 409.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread
from tests.support import TEST_SETTINGS, require, running

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.getenv("SCALEOUT_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.getenv("SCALEOUT_REDIS_URL", "redis://127.0.0.1:6379/14")

CREATE = """
from django.contrib.auth.models import User
from gallery.models import Generation
from gallery import tasks
users = [User.objects.create_user(f"user{i}", password="x") for i in range(3)]
for n in range(20):
    Generation.objects.create(owner=users[n % 3], prompt=f"scale-out picture {n}")
tasks.wake_submission()
"""

REPORT = """
import json
from gallery.models import Generation
print(json.dumps({
    "statuses": sorted(Generation.objects.values_list("status", flat=True)),
    "in_flight": Generation.objects.in_flight().count(),
    "request_ids": [str(r) for r in Generation.objects.values_list("request_id", flat=True)],
    "images": sum(g.images.count() for g in Generation.objects.all()),
}))
"""


def _reachable() -> tuple[bool, str]:
    try:
        import psycopg
        import redis

        psycopg.connect(PG_URL, connect_timeout=2).close()
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as e:  # any failure to connect means "not on this machine"
        return False, f"PostgreSQL or Redis not reachable ({e.__class__.__name__})"
    return True, ""


@pytest.fixture
def scaleout_database():
    ok, reason = _reachable()
    require(ok, reason)
    import psycopg

    name = f"banana_scaleout_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_it_shares_the_slots_across_two_worker_clusters(scaleout_database, tmp_path):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    simulator = start_in_thread(SimulatorConfig(speed=0.05, seed=5))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": TEST_SETTINGS,
        "DATABASE_URL": scaleout_database,
        "REDIS_URL": REDIS_URL,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "AIGPTIMAGE_BASE_URL": simulator.base_url,
        "AIGPTIMAGE_API_KEY": DEFAULT_API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator.base_url.removeprefix("http://"),
        "AIGPTIMAGE_MAX_ACTIVE_TASKS": "5",
        "AIGPTIMAGE_POLL_INTERVAL": "0.1",
        "AIGPTIMAGE_POLL_MAX_INTERVAL": "0.3",
        "AIGPTIMAGE_CONFLICT_WAIT": "0.2",
        "RUNNER_SECONDS": "3",
        "Q_WORKERS": "2",
    }
    simulator.simulator.config.api_keys = {DEFAULT_API_KEY: "basic"}
    manage = [sys.executable, str(ROOT / "manage.py")]

    def shell(code: str) -> str:
        result = subprocess.run(
            [*manage, "shell", "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return result.stdout

    subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True)
    log = tmp_path / "clusters.log"
    clusters = ExitStack()
    try:
        clusters.enter_context(
            running([*manage, "qcluster"], [*manage, "qcluster"], env=env, log=log)
        )
        shell(CREATE)
        peak = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            report = json.loads(shell(REPORT).strip().splitlines()[-1])
            peak = max(peak, report["in_flight"])
            if set(report["statuses"]) <= {"done", "failed"}:
                break
            time.sleep(0.3)
        assert report["statuses"] == ["done"] * 20, report["statuses"]
        assert report["images"] == 20
        status = simulator.simulator.status()
        assert status["answers"].get("409", 0) == 0  # never more than the provider allows
        for request_id in report["request_ids"]:
            assert len(status["tasksByRequestId"][request_id]) == 1
        assert status["tasksCreated"] == 20
        assert peak <= 5
    finally:
        clusters.close()
        simulator.shutdown()
        simulator.server_close()
