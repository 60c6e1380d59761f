"""What the simulator is told: `SimulatorConfig`, the tiers, and the prompt markers.

The server-wide configuration comes from keyword arguments, from SIMULATOR_* environment variables
(`SimulatorConfig.from_env`) or from the command line (`simulator.cli`); one task's faults come from
markers in its prompt. docs/simulator.md lists them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API_KEY = "sim-key"
RESOLUTIONS = ("1K", "2K", "4K")

# Seconds per state at speed 1.0, from the contract's "about 10-20 s at 1K, 30-40 s at 2K…".
WAITING_SECONDS = 1.0
QUEUING_SECONDS = 2.0
GENERATING_SECONDS = {"1K": 12.0, "2K": 35.0, "4K": 60.0}
# A task's total seconds per resolution at speed 1.0, the middle of its spread; see durations.
DEFAULT_DURATIONS = {
    resolution: WAITING_SECONDS + QUEUING_SECONDS + generating
    for resolution, generating in GENERATING_SECONDS.items()
}
# Without render_sigma, each state lasts its seconds, times speed, give or take this fraction.
JITTER = 0.1


@dataclass(frozen=True)
class Tier:
    create_per_second: int
    create_per_minute: int
    query_per_second: int
    query_per_minute: int
    active_tasks: int

    def limits(self, kind: str) -> tuple[tuple[int, int], ...]:
        """(window seconds, allowed calls) for "create" or "query", widest window first."""
        if kind == "create":
            return ((60, self.create_per_minute), (1, self.create_per_second))
        return ((60, self.query_per_minute), (1, self.query_per_second))


TIERS = {
    "free": Tier(1, 10, 2, 60, 1),
    "basic": Tier(5, 180, 20, 1000, 5),
    "standard": Tier(10, 600, 50, 3000, 15),
    "pro": Tier(20, 1200, 100, 6000, 30),
}

MARKER_RE = re.compile(r"\[sim:([a-z0-9-]+)(?:=([^\]\s]*))?\]", re.IGNORECASE)


def parse_markers(prompt: str) -> dict[str, str | None]:
    """`[sim:NAME]` and `[sim:NAME=VALUE]` anywhere in the prompt, names case-insensitive."""
    return {m.group(1).lower(): m.group(2) for m in MARKER_RE.finditer(prompt)}


def parse_api_keys(text: str) -> dict[str, str]:
    """`"sim-key:basic,other:free"` -> {"sim-key": "basic", "other": "free"}; the tier defaults
    to basic."""
    keys: dict[str, str] = {}
    for item in text.split(","):
        key, _, tier = item.strip().partition(":")
        if key.strip():
            keys[key.strip()] = tier.strip().lower() or "basic"
    return keys


def parse_tiers(text: str) -> dict[str, Tier]:
    """`"bench300:300/100/500"` -> a tier "bench300" with 300 active tasks, 100 creates and 500
    queries a second; the per-minute limits are 60 times the per-second ones."""
    tiers: dict[str, Tier] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, limits = item.partition(":")
        try:
            active, create, query = (int(number) for number in limits.split("/"))
        except ValueError:
            active = create = query = 0
        if not name.strip() or min(active, create, query) < 1:
            raise ValueError(
                f"{item.strip()!r}: use NAME:ACTIVE/CREATE-PER-SECOND/QUERY-PER-SECOND, "
                "whole numbers of 1 or more"
            )
        tiers[name.strip().lower()] = Tier(create, 60 * create, query, 60 * query, active)
    return tiers


def parse_durations(text: str) -> dict[str, float]:
    """`"1K=12,4K=60"` -> {"1K": 12.0, "4K": 60.0}: a task's median total seconds at speed 1.0."""
    durations: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        resolution, _, seconds = item.partition("=")
        resolution = resolution.strip().upper()
        if resolution not in RESOLUTIONS:
            raise ValueError(
                f"{item.strip()!r}: use RESOLUTION=SECONDS, with {', '.join(RESOLUTIONS)}"
            )
        durations[resolution] = float(seconds)
    return durations


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


RATES = (
    "fail_rate", "error_rate", "tail_rate", "conflict_rate", "rate_limit_rate", "broken_rate",
    "slow_rate", "query_404_rate", "expired_rate",
)  # fmt: skip


@dataclass
class SimulatorConfig:
    api_keys: dict[str, str] = field(default_factory=lambda: {DEFAULT_API_KEY: "basic"})
    speed: float = 1.0
    credits: int | None = None
    fail_rate: float = 0.0
    error_rate: float = 0.0
    slow_seconds: float = 0.0
    result_ttl: float = 86400.0
    message_key: str = "msg"
    empty_fail_code: bool = False
    seed: int | None = None
    verbose: bool = False
    # Render time: the median total seconds per resolution at speed 1.0 (any left out keep
    # DEFAULT_DURATIONS), a lognormal spread around it when render_sigma > 0, and a long tail.
    durations: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DURATIONS))
    render_sigma: float = 0.0
    tail_rate: float = 0.0
    tail_factor: float = 2.5
    # Tiers beyond TIERS (or replacing one of them), by name, for api_keys to use.
    extra_tiers: dict[str, Tier] = field(default_factory=dict)
    # Faults at random, for a soak test (fail_rate and error_rate above are two more): 409 on
    # createTask, 429 on any call, answers cut off mid-JSON or late, tasks that recordInfo
    # forgets, and successful tasks whose result URLs have already expired.
    conflict_rate: float = 0.0
    rate_limit_rate: float = 0.0
    broken_rate: float = 0.0
    slow_rate: float = 0.0
    slow_answer_seconds: float = 10.0
    query_404_rate: float = 0.0
    expired_rate: float = 0.0
    # Where the tasks, counters, credits and URL secret are read from at start (when the file
    # exists) and written to at a clean stop, so that a restart carries on.
    state_file: Path | None = None

    def __post_init__(self) -> None:
        tiers = TIERS | self.extra_tiers
        unknown = {tier for tier in self.api_keys.values() if tier not in tiers}
        if unknown:
            raise ValueError(f"unknown tier {sorted(unknown)}; use one of {', '.join(tiers)}")
        if self.speed <= 0:
            raise ValueError("speed must be greater than 0")
        for name in RATES:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.slow_seconds < 0 or self.slow_answer_seconds < 0:
            raise ValueError("slow_seconds and slow_answer_seconds must be 0 or more")
        if self.message_key not in ("msg", "message"):
            raise ValueError('message_key must be "msg" or "message"')
        self.durations = DEFAULT_DURATIONS | self.durations
        if set(self.durations) != set(RESOLUTIONS) or min(self.durations.values()) <= 0:
            raise ValueError(
                f"durations must be seconds greater than 0 for {', '.join(RESOLUTIONS)}"
            )
        if self.render_sigma < 0:
            raise ValueError("render_sigma must be 0 or more")
        if self.tail_factor < 1:
            raise ValueError("tail_factor must be 1 or more")

    def tier(self, name: str) -> Tier:
        return self.extra_tiers[name] if name in self.extra_tiers else TIERS[name]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> SimulatorConfig:
        """The config from SIMULATOR_* variables; keyword arguments (the command line's options)
        win over them."""
        config: dict[str, Any] = {}
        readers: dict[str, tuple[str, Any]] = {
            "SIMULATOR_API_KEYS": ("api_keys", parse_api_keys),
            "SIMULATOR_TIERS": ("extra_tiers", parse_tiers),
            "SIMULATOR_SPEED": ("speed", float),
            "SIMULATOR_CREDITS": ("credits", int),
            "SIMULATOR_FAIL_RATE": ("fail_rate", float),
            "SIMULATOR_ERROR_RATE": ("error_rate", float),
            "SIMULATOR_SLOW_SECONDS": ("slow_seconds", float),
            "SIMULATOR_RESULT_TTL": ("result_ttl", float),
            "SIMULATOR_MESSAGE_KEY": ("message_key", str.strip),
            "SIMULATOR_EMPTY_FAIL_CODE": ("empty_fail_code", _env_bool),
            "SIMULATOR_SEED": ("seed", int),
            "SIMULATOR_VERBOSE": ("verbose", _env_bool),
            "SIMULATOR_DURATIONS": ("durations", parse_durations),
            "SIMULATOR_RENDER_SIGMA": ("render_sigma", float),
            "SIMULATOR_TAIL_RATE": ("tail_rate", float),
            "SIMULATOR_TAIL_FACTOR": ("tail_factor", float),
            "SIMULATOR_CONFLICT_RATE": ("conflict_rate", float),
            "SIMULATOR_RATE_LIMIT_RATE": ("rate_limit_rate", float),
            "SIMULATOR_BROKEN_RATE": ("broken_rate", float),
            "SIMULATOR_SLOW_RATE": ("slow_rate", float),
            "SIMULATOR_SLOW_ANSWER_SECONDS": ("slow_answer_seconds", float),
            "SIMULATOR_QUERY_404_RATE": ("query_404_rate", float),
            "SIMULATOR_EXPIRED_RATE": ("expired_rate", float),
            "SIMULATOR_STATE_FILE": ("state_file", lambda value: Path(value.strip())),
        }
        for name, (attribute, read) in readers.items():
            value = environ.get(name, "")
            if value.strip():
                try:
                    config[attribute] = read(value)
                except ValueError as e:
                    raise ValueError(f"{name}={value!r} is not valid: {e}") from e
        return cls(**(config | overrides))
