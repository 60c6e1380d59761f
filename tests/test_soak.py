"""The short soak: faults, two SIGKILLs of the worker cluster and a provider outage.

`benchmarks/soak.py` runs the real processes (the simulator as a process of its own, one
qcluster on a SQLite file); the full version (500 generations) is quoted in the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import process_env

ROOT = Path(__file__).resolve().parent.parent


def test_it_loses_nothing_and_pays_nothing_twice_through_kills_and_an_outage():
    command = [
        sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--json",
        "--generations", "60", "--users", "6", "--kills", "2", "--kill-every", "8",
        "--outage-at", "12", "--outage", "5", "--stuck-after", "90",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=process_env(), capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("SOAK "))
    result = json.loads(line.removeprefix("SOAK "))
    assert result["kills"] == 2
    assert result["done"] + result["failed"] == 60
    assert result["submitted"] == 60
    assert result["duplicated"] == 0
    assert result["stuck"] == 0
    assert result["lost"] == 0
    # Faults end some generations (content policy, a task the provider forgot, an expired
    # result), but never a transient one: 500s, 429s, 409s and the outage are waited out.
    assert set(result["failed_by_reason"]) <= {"400", "404", "expired", "500"}
    assert result["done"] >= 45
