"""gunicorn's settings for `make run` (the Procfile's `web`): on loopback at PORT, quiet unless
LOG_LEVEL asks for more. A real deployment passes its own (docs/deploy.md, Server)."""

from __future__ import annotations

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = 2
threads = 4
timeout = 30
# honcho gives every process 5 s to stop after Ctrl-C before it kills it.
graceful_timeout = 3

_level = os.environ.get("LOG_LEVEL", "WARNING").strip().upper()
loglevel = {"DEBUG": "debug", "INFO": "info"}.get(_level, "warning")
# Every request, the card refresh every 2 s included: only for LOG_LEVEL=DEBUG.
accesslog = "-" if _level == "DEBUG" else None


def when_ready(server) -> None:
    url = f"http://{bind}/"
    print(
        f"\n  Banana Gallery is running: {url}\n"
        f"  Sign up at {url}accounts/signup/ . Mail (password resets, verification) is printed\n"
        "  here, and a line for every image that is done or failed. Press Ctrl-C to stop.\n",
        flush=True,
    )
