from __future__ import annotations

from django.apps import AppConfig


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
