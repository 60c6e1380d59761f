from __future__ import annotations

from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """Commands for development only; installed when DEBUG is on (see settings)."""

    name = "devtools"
    verbose_name = "Development tools"
