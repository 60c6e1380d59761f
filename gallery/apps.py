from __future__ import annotations

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


def reinstall_triggers(using: str, **kwargs) -> None:
    """SQLite alters a table by making a new one and dropping the old, and a dropped table's
    triggers go with it: after every migrate, the gallery's are put back where missing (see
    gallery.triggers). Not before migration 0011 made the table they write to."""
    from gallery import triggers

    connection = connections[using]
    if connection.vendor == "sqlite" and "gallery_gallerycounts" in (
        connection.introspection.table_names()
    ):
        triggers.install(connection)


class GalleryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gallery"

    def ready(self) -> None:
        from django.urls import register_converter
        from django_q.signals import post_spawn

        from gallery import tasks
        from gallery.forms import IdConverter

        # `<id:pk>` in every URL of the site: ids parsed strictly, before the URLs are read.
        register_converter(IdConverter, "id")

        # A worker process that starts (at cluster start, after a crash or a recycle) sends a
        # reconcile, so that a killed worker's work resumes within seconds, not a minute.
        post_spawn.connect(tasks.on_worker_start, dispatch_uid="gallery.on_worker_start")
        post_migrate.connect(reinstall_triggers, sender=self, dispatch_uid="gallery.triggers")
