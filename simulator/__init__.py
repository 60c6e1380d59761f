"""A faithful, offline stand-in for the Nano Banana 2 text-to-image jobs API.

A real threaded HTTP server on loopback that speaks docs/provider-contract.md exactly: Bearer
keys, validation, the state walk, X-Request-ID de-duplication, per-tier rate and active-task
limits, credits, signed result URLs that expire, and real PNG/JPEG images of the documented size.
Faults are switched on for the whole server by `SimulatorConfig` or for one task by markers in its
prompt (`[sim:fail]`, `[sim:500=2]`…). docs/simulator.md is the reference.

    python -m simulator --port 8765 --speed 0.5

It deliberately imports nothing from Django or from the app's provider client: it is the other
side of the contract, so a drift between the two shows up as a failing test instead of hiding.

- `simulator.config`: `SimulatorConfig`, the tiers, the environment and the prompt markers;
- `simulator.state`: `Simulator`, the tasks, limits, de-duplication and counters;
- `simulator.images`: the documented sizes and `render_image`;
- `simulator.server`: the HTTP server, `make_server` and `start_in_thread`;
- `simulator.cli`: `main(argv)`, the command line behind `python -m simulator`.
"""

from __future__ import annotations

from simulator.cli import main
from simulator.config import (
    DEFAULT_API_KEY,
    RESOLUTIONS,
    TIERS,
    SimulatorConfig,
    Tier,
    parse_api_keys,
    parse_durations,
    parse_markers,
    parse_tiers,
)
from simulator.images import ASPECT_RATIOS, SIZES_1K, image_size, render_image
from simulator.server import SimulatorServer, make_server, start_in_thread
from simulator.state import MODEL, OUTPUT_FORMATS, PROMPT_MAX_LENGTH, STATES, Simulator

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_API_KEY",
    "MODEL",
    "OUTPUT_FORMATS",
    "PROMPT_MAX_LENGTH",
    "RESOLUTIONS",
    "SIZES_1K",
    "STATES",
    "TIERS",
    "Simulator",
    "SimulatorConfig",
    "SimulatorServer",
    "Tier",
    "image_size",
    "main",
    "make_server",
    "parse_api_keys",
    "parse_durations",
    "parse_markers",
    "parse_tiers",
    "render_image",
    "start_in_thread",
]
