"""`python manage.py simulator`: serve the provider simulator until Ctrl-C.

Options win over the SIMULATOR_* environment variables, which win over the defaults; see
docs/simulator.md.
"""

from __future__ import annotations

import os
from argparse import ArgumentParser
from dataclasses import replace
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery.simulator import SimulatorConfig, make_server, parse_api_keys


class Command(BaseCommand):
    help = "Serve the Nano Banana 2 provider simulator on loopback until interrupted."
    # It touches neither models nor the database: start at once even before migrations.
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", help="address to bind (SIMULATOR_HOST, 127.0.0.1)")
        parser.add_argument("--port", type=int, help="port to bind (SIMULATOR_PORT, 8765)")
        parser.add_argument(
            "--api-keys", help='accepted keys and tiers, e.g. "sim-key:basic,other:free"'
        )
        parser.add_argument("--speed", type=float, help="multiplies every task duration")
        parser.add_argument("--credits", type=int, help="credit balance (default: unlimited)")
        parser.add_argument("--fail-rate", type=float, help="fraction of tasks ending in fail")
        parser.add_argument("--error-rate", type=float, help="fraction of API answers that are 500")
        parser.add_argument("--slow-seconds", type=float, help="delay before every API answer")
        parser.add_argument("--result-ttl", type=float, help="seconds a result URL stays valid")
        parser.add_argument("--message-key", choices=("msg", "message"), help="envelope key")
        parser.add_argument(
            "--empty-fail-code",
            action="store_const",
            const=True,
            help='send failCode/failMsg as "" instead of null on success',
        )
        parser.add_argument("--seed", type=int, help="seed for jitter, fail_rate and error_rate")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = SimulatorConfig.from_env()
            overrides = {
                name: options[name]
                for name in (
                    "speed",
                    "credits",
                    "fail_rate",
                    "error_rate",
                    "slow_seconds",
                    "result_ttl",
                    "message_key",
                    "empty_fail_code",
                    "seed",
                )
                if options[name] is not None
            }
            if options["api_keys"] is not None:
                overrides["api_keys"] = parse_api_keys(options["api_keys"])
            # Django's own -v 2 is the switch for one log line per request.
            if options["verbosity"] >= 2:
                overrides["verbose"] = True
            config = replace(config, **overrides)
            host = options["host"] or os.environ.get("SIMULATOR_HOST", "127.0.0.1")
            port = (
                options["port"]
                if options["port"] is not None
                else int(os.environ.get("SIMULATOR_PORT", "8765"))
            )
        except ValueError as e:
            raise CommandError(str(e)) from e

        try:
            server = make_server(config, host, port)
        except OSError as e:
            raise CommandError(f"cannot listen on {host}:{port}: {e}") from e
        keys = ", ".join(f"{key} ({tier})" for key, tier in config.api_keys.items())
        self.stdout.write(f"Provider simulator listening on {server.base_url}")
        self.stdout.write(f"Accepted API keys: {keys}")
        self.stdout.write(f"Speed x{config.speed:g}. Quit with CONTROL-C.")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            self.stdout.write("Stopping the simulator.")
        finally:
            server.server_close()
