"""The command line: `python -m simulator [options]` serves the simulator until Ctrl-C or SIGTERM.

Options win over the SIMULATOR_* environment variables, which win over the defaults; see
docs/simulator.md. `manage.py simulator` (development only) calls the same `main`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simulator.config import SimulatorConfig, parse_api_keys, parse_durations, parse_tiers
from simulator.server import make_server

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _option(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """`read` as an argparse type, so that its ValueError message reaches the user."""

    def parse(text: str) -> Any:
        try:
            return read(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return parse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m simulator",
        description="Serve the Nano Banana 2 provider simulator on loopback until interrupted.",
        epilog="Options win over the SIMULATOR_* environment variables, which win over the "
        "defaults; see docs/simulator.md.",
    )
    add = parser.add_argument
    add("--host", help=f"address to bind (SIMULATOR_HOST, {DEFAULT_HOST})")
    add("--port", type=int, help=f"port to bind (SIMULATOR_PORT, {DEFAULT_PORT})")
    add(
        "--api-keys",
        type=_option(parse_api_keys),
        help='accepted keys and tiers, e.g. "sim-key:basic,other:free"',
    )
    add(
        "--tiers",
        dest="extra_tiers",
        type=_option(parse_tiers),
        help='more tiers, NAME:ACTIVE/CREATE-PER-S/QUERY-PER-S, e.g. "bench300:300/100/500"',
    )
    add("--speed", type=float, help="multiplies every task duration")
    add(
        "--durations",
        type=_option(parse_durations),
        help='median total seconds per resolution at speed 1, e.g. "1K=15,2K=38,4K=63"',
    )
    add("--render-sigma", type=float, help="lognormal sigma of task durations (0: ±10 %% jitter)")
    add("--tail-rate", type=float, help="fraction of tasks that take --tail-factor times longer")
    add("--tail-factor", type=float, help="how much longer a tail task takes (2.5)")
    add("--credits", type=int, help="credit balance (default: unlimited)")
    add("--fail-rate", type=float, help="fraction of tasks ending in fail")
    add("--error-rate", type=float, help="fraction of API answers that are 500")
    add("--conflict-rate", type=float, help="fraction of createTask calls answered 409")
    add("--rate-limit-rate", type=float, help="fraction of API calls answered 429 (retryAfter 1)")
    add("--broken-rate", type=float, help="fraction of API answers cut off mid-JSON")
    add("--slow-rate", type=float, help="fraction of API answers sent --slow-answer-seconds late")
    add("--slow-answer-seconds", type=float, help="how late a slow answer is (10)")
    add("--query-404-rate", type=float, help="fraction of recordInfo calls that lose their task")
    add("--expired-rate", type=float, help="fraction of successful tasks with expired URLs")
    add("--slow-seconds", type=float, help="delay before every API answer")
    add("--result-ttl", type=float, help="seconds a result URL stays valid")
    add("--message-key", choices=("msg", "message"), help="envelope key for the message")
    add(
        "--empty-fail-code",
        action="store_const",
        const=True,
        help='send failCode/failMsg as "" instead of null on success',
    )
    add("--seed", type=int, help="seed for every random draw (durations, rates)")
    add(
        "--state-file",
        type=Path,
        help="read tasks, counters and credits from this file at start, write them at stop",
    )
    add("-v", "--verbose", action="store_const", const=True, help="one line per request on stderr")
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    parser = build_parser(prog)
    options = vars(parser.parse_args(argv))
    host = options.pop("host") or os.environ.get("SIMULATOR_HOST", "").strip() or DEFAULT_HOST
    port = options.pop("port")
    try:
        if port is None:
            port_text = os.environ.get("SIMULATOR_PORT", "").strip() or str(DEFAULT_PORT)
            try:
                port = int(port_text)
            except ValueError as e:
                raise ValueError(f"SIMULATOR_PORT={port_text!r} is not valid: {e}") from e
        overrides = {name: value for name, value in options.items() if value is not None}
        config = SimulatorConfig.from_env(os.environ, **overrides)
    except ValueError as e:
        parser.error(str(e))

    resumed = config.state_file is not None and config.state_file.exists()
    try:
        server = make_server(config, host, port)
    except ValueError as e:  # an unreadable state file
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{parser.prog}: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 1
    keys = ", ".join(f"{key} ({tier})" for key, tier in config.api_keys.items())
    print(f"Provider simulator listening on {server.base_url}")
    print(f"Accepted API keys: {keys}")
    if config.state_file is not None:
        if resumed:
            tasks = server.simulator.status()["tasksCreated"]
            print(f"Carrying on from {config.state_file} ({tasks} tasks); written again at stop.")
        else:
            print(f"No {config.state_file} yet: starting afresh; written at stop.")
    print(f"Speed x{config.speed:g}. Quit with CONTROL-C.", flush=True)

    # SIGTERM (what a process manager or a script's `kill` sends) stops it as Ctrl-C does, and
    # so does SIGINT even where it came in ignored, as in a script's background job.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {number: signal.signal(number, _interrupt) for number in stop_signals}
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopping the simulator.", flush=True)
    finally:
        server.server_close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if config.state_file is not None:
        print(f"State written to {config.state_file}.", flush=True)
    return 0
