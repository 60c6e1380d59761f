from __future__ import annotations

from django.db import migrations, models


def create_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name="gallery.prune",
        defaults={"func": "gallery.tasks.prune", "schedule_type": "D", "repeats": -1},
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="gallery.prune").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("gallery", "0014_share_link_options"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="post",
            index=models.Index(fields=["created_at"], name="post_created_at"),
        ),
        migrations.RunPython(create_schedule, delete_schedule),
    ]
