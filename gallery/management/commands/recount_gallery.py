"""`python manage.py recount_gallery [--prompt-index]`

Counts every gallery afresh and repairs the stored counters that are off (the database keeps
them itself, gallery.triggers: they are off only after writes made with the triggers missing,
such as a restore of the table alone). Safe to run while the site is in use, and twice.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.utils.translation import ngettext

from gallery import triggers
from gallery.models import GalleryCounts, Generation


class Command(BaseCommand):
    help = (
        "Count every user's generations afresh and repair the gallery counters that are off; "
        "with --prompt-index, rebuild SQLite's prompt search index too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--prompt-index",
            action="store_true",
            help="also index every prompt again (SQLite; PostgreSQL keeps its own index)",
        )

    def handle(self, *args, prompt_index: bool, **options) -> None:
        owners = set(Generation.objects.values_list("owner", flat=True).distinct())
        owners |= set(GalleryCounts.objects.values_list("owner", flat=True))
        repaired = sum(GalleryCounts.recount(owner) for owner in sorted(owners))
        galleries = ngettext("%(n)d gallery", "%(n)d galleries", len(owners)) % {"n": len(owners)}
        self.stdout.write(f"Counted {galleries}: {repaired} had counters that were off.")
        if prompt_index and connection.vendor == "sqlite":
            triggers.rebuild_prompt_index(connection)
            self.stdout.write("Indexed every prompt again.")
