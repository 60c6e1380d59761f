"""`python -m simulator`: serve the provider simulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import sys

from simulator.cli import main

sys.exit(main())
