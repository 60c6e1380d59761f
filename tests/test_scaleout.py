"""The scale-out path: PostgreSQL, django-q2's Redis broker, and two worker clusters at once.

Two `qcluster` processes (as on two hosts) share one database and one broker. Together they
must still never hold more tasks at the provider than AIGPTIMAGE_MAX_ACTIVE_TASKS, make one
provider task per generation, and finish everything. The simulator's key is on a tier of its
own whose limit is the app's 15 active tasks: one task too many would come back as a 409. Its
rates are high enough that the slots, not the create rate, set the pace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread
from simulator.config import Tier
from tests.support import (
    fresh_postgres_database,
    postgres_reachable,
    process_env,
    redis_reachable,
    require,
    running,
)

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.getenv("SCALEOUT_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.getenv("SCALEOUT_REDIS_URL", "redis://127.0.0.1:6379/14")

GENERATIONS = 200
CREATE = f"""
from django.contrib.auth.models import User
from gallery.models import Generation
from gallery import tasks
users = [User.objects.create_user(f"user{{i}}", password="x") for i in range(5)]
Generation.objects.bulk_create(
    Generation(owner=users[n % 5], prompt=f"scale-out picture {{n}}") for n in range({GENERATIONS})
)
tasks.wake_submission()
"""


@pytest.fixture
def scaleout_database():
    require(*postgres_reachable(PG_URL))
    require(*redis_reachable(REDIS_URL))
    with fresh_postgres_database(PG_URL, "banana_scaleout") as url:
        yield url


def test_it_shares_the_slots_across_two_worker_clusters(scaleout_database, tmp_path):
    """Two clusters with two runners of each kind: 200 generations, never more than 15 tasks
    at the provider (the tier's limit: one more would be a 409), createTask paced under the
    tier's rate (one too fast would be a 429), one task per generation."""
    import psycopg
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    tier = Tier(
        create_per_second=40,
        create_per_minute=2400,
        query_per_second=200,
        query_per_minute=12_000,
        active_tasks=15,
    )
    simulator = start_in_thread(
        SimulatorConfig(
            api_keys={DEFAULT_API_KEY: "scaleout"},
            extra_tiers={"scaleout": tier},
            speed=0.06,
            seed=5,
        )
    )
    env = {
        **process_env(),
        "DATABASE_URL": scaleout_database,
        "REDIS_URL": REDIS_URL,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "AIGPTIMAGE_BASE_URL": simulator.base_url,
        "AIGPTIMAGE_API_KEY": DEFAULT_API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator.base_url.removeprefix("http://"),
        "AIGPTIMAGE_MAX_ACTIVE_TASKS": "15",
        "AIGPTIMAGE_CREATE_RATE": "36",
        "AIGPTIMAGE_POLL_BUDGET": "150",
        "AIGPTIMAGE_POLL_INTERVAL": "0.1",
        "AIGPTIMAGE_POLL_MAX_INTERVAL": "0.3",
        "AIGPTIMAGE_POLL_LATENCY": "0.2",
        "AIGPTIMAGE_CONFLICT_WAIT": "0.2",
        "PIPELINE_RUNNERS": "2",
        "RUNNER_SECONDS": "3",
        "Q_WORKERS": "3",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True)
    log = tmp_path / "clusters.log"
    peak = [0]
    sampling = threading.Event()

    def sample_provider() -> None:
        while not sampling.wait(0.05):
            tasks = simulator.simulator.status()["tasks"]
            peak[0] = max(peak[0], tasks["waiting"] + tasks["queuing"] + tasks["generating"])

    sampler = threading.Thread(target=sample_provider, daemon=True)
    clusters = ExitStack()
    try:
        clusters.enter_context(
            running([*manage, "qcluster"], [*manage, "qcluster"], env=env, log=log)
        )
        sampler.start()
        subprocess.run([*manage, "shell", "-c", CREATE], env=env, check=True, capture_output=True)
        deadline = time.monotonic() + 120
        with psycopg.connect(scaleout_database, autocommit=True) as db:
            while time.monotonic() < deadline:
                pending = db.execute(
                    "SELECT count(*) FROM gallery_generation WHERE status NOT IN ('done', 'failed')"
                ).fetchone()[0]
                if pending == 0:
                    break
                time.sleep(0.5)
            statuses = dict(
                db.execute("SELECT status, count(*) FROM gallery_generation GROUP BY status")
            )
            request_ids = [
                str(r) for (r,) in db.execute("SELECT request_id FROM gallery_generation")
            ]
            images = db.execute("SELECT count(*) FROM gallery_image").fetchone()[0]
        assert statuses == {"done": GENERATIONS}, statuses
        assert images == GENERATIONS
        status = simulator.simulator.status()
        assert status["answers"].get("409", 0) == 0  # never more than the provider allows
        assert status["answers"].get("429", 0) == 0  # never faster than it allows
        for request_id in request_ids:
            assert len(status["tasksByRequestId"][request_id]) == 1
        assert status["tasksCreated"] == GENERATIONS
        assert 13 <= peak[0] <= 15  # the slots were used, and never one too many
    finally:
        sampling.set()
        clusters.close()
        simulator.shutdown()
        simulator.server_close()
