"""Two thumbnails per image, both in the image's own shape: `thumbnail` (THUMBNAIL_HEIGHT px
tall) and the new `thumbnail_large` (twice that, for 2x screens).

Images stored before this migration keep their old square-fitted thumbnail and have no large
one. After migrating, run

    python manage.py rebuild_thumbnails

once: it remakes both thumbnails of every image that lacks the large one, from the stored
original, in batches, and is safe to stop and run again.
"""

import gallery.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0006_lease_handover'),
    ]

    operations = [
        migrations.AddField(
            model_name='image',
            name='thumbnail_large',
            field=models.FileField(blank=True, max_length=255, upload_to=gallery.models.thumbnail_upload_to),
        ),
    ]
