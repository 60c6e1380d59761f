"""`python manage.py rebuild_thumbnails [--force] [--batch-size N]`

Remakes both thumbnails of stored images from their originals: after upgrading to thumbnails
that keep the image's shape (migration 0007), and with --force after changing THUMBNAIL_HEIGHT.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser
from django.utils.translation import ngettext

from gallery.models import Image


class Command(BaseCommand):
    help = (
        "Make the two WebP thumbnails of every stored image that lacks the large one, from its "
        "original. Safe to stop and run again; --force remakes them all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="remake the thumbnails of every image"
        )
        parser.add_argument(
            "--batch-size", type=int, default=100, help="images read from the database at once"
        )

    def handle(self, *args, force: bool, batch_size: int, **options) -> None:
        todo = Image.objects.all() if force else Image.objects.without_large_thumbnails()
        skipped = Image.objects.count() - todo.count()
        made = missing = 0
        # Keyset batches on the id: each is a short query, and an image made meanwhile by the
        # pipeline (which makes both thumbnails itself) is not waited for.
        after = 0
        while batch := list(todo.filter(pk__gt=after).order_by("pk")[:batch_size]):
            for image in batch:
                try:
                    if image.rebuild_thumbnails():
                        made += 1
                except OSError as e:
                    missing += 1
                    self.stderr.write(
                        self.style.WARNING(
                            f"Image {image.pk}: its original {image.file.name} could not be "
                            f"read ({e}); its thumbnails are left as they were."
                        )
                    )
            after = batch[-1].pk
            self.stdout.write(f"… {made} made so far, up to image {after}")
        images = ngettext("%(n)d image", "%(n)d images", made) % {"n": made}
        originals = ngettext("%(n)d original", "%(n)d originals", missing) % {"n": missing}
        self.stdout.write(
            f"Thumbnails made for {images}; {skipped} already had them; "
            f"{originals} could not be read."
        )
