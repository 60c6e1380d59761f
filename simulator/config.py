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
from typing import Any

DEFAULT_API_KEY = "sim-key"
RESOLUTIONS = ("1K", "2K", "4K")


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


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


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

    def __post_init__(self) -> None:
        unknown = {tier for tier in self.api_keys.values() if tier not in TIERS}
        if unknown:
            raise ValueError(f"unknown tier {sorted(unknown)}; use one of {', '.join(TIERS)}")
        if self.speed <= 0:
            raise ValueError("speed must be greater than 0")
        if not (0 <= self.fail_rate <= 1 and 0 <= self.error_rate <= 1):
            raise ValueError("fail_rate and error_rate must be between 0 and 1")
        if self.message_key not in ("msg", "message"):
            raise ValueError('message_key must be "msg" or "message"')

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> SimulatorConfig:
        """The config from SIMULATOR_* variables; keyword arguments (the command line's options)
        win over them."""
        config: dict[str, Any] = {}
        readers: dict[str, tuple[str, Any]] = {
            "SIMULATOR_API_KEYS": ("api_keys", parse_api_keys),
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
        }
        for name, (attribute, read) in readers.items():
            value = environ.get(name, "")
            if value.strip():
                try:
                    config[attribute] = read(value)
                except ValueError as e:
                    raise ValueError(f"{name}={value!r} is not valid: {e}") from e
        return cls(**(config | overrides))
