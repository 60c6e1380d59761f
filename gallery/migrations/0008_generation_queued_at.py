"""`Generation.queued_at`: when the current try was queued (at creation, and at each retry).

Cards, timings and the queue's order count from it, so that `created_at` can keep the time a
generation was first made. Until now a retry overwrote `created_at`, so it holds just that
for every existing row, and is copied over.
"""

import django.utils.timezone
from django.db import migrations, models
from django.db.models import F


def copy_created_at(apps, schema_editor):
    Generation = apps.get_model("gallery", "Generation")
    Generation.objects.update(queued_at=F("created_at"))


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0007_image_thumbnail_large'),
    ]

    operations = [
        migrations.AddField(
            model_name='generation',
            name='queued_at',
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.RunPython(copy_created_at, migrations.RunPython.noop),
    ]
