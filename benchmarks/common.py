"""What every benchmark prints the same way: percentiles and the line naming the machine."""

from __future__ import annotations

import os
import platform
import statistics
from datetime import datetime


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
