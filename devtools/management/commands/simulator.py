"""`python manage.py simulator`, in development: the same as `python -m simulator`."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from simulator.cli import build_parser, main


class Command(BaseCommand):
    help = "Serve the Nano Banana 2 provider simulator on loopback until interrupted."

    # The options are the simulator's own, parsed by it, not Django's: it is Django-free.
    def run_from_argv(self, argv: list[str]) -> None:
        sys.exit(main(argv[2:], prog=f"manage.py {argv[1]}"))

    def print_help(self, prog_name: str, subcommand: str) -> None:
        build_parser(f"{prog_name} {subcommand}").print_help()
