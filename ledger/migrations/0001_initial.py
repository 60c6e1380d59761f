"""The cost ledger (`ledger.LedgerEntry`). Nothing to run: entries start with the next task the
image service accepts; tasks accepted before this migration have none.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('gallery', '0008_generation_queued_at'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='LedgerEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('generation_pk', models.PositiveBigIntegerField(verbose_name='generation id')),
                ('task_id', models.CharField(max_length=100, unique=True)),
                ('resolution', models.CharField(max_length=4)),
                ('credits', models.PositiveIntegerField()),
                ('money', models.DecimalField(blank=True, decimal_places=6, max_digits=18, null=True)),
                ('currency', models.CharField(blank=True, max_length=8)),
                ('accepted_at', models.DateTimeField()),
                ('outcome', models.CharField(choices=[('pending', 'Pending'), ('done', 'Done'), ('failed', 'Failed'), ('abandoned', 'Abandoned'), ('deleted', 'Deleted while pending')], default='pending', max_length=10)),
                ('outcome_code', models.CharField(blank=True, max_length=20)),
                ('outcome_reason', models.TextField(blank=True)),
                ('outcome_at', models.DateTimeField(blank=True, null=True)),
                ('generation', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='ledger_entries', to='gallery.generation')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='ledger_entries', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name_plural': 'ledger entries',
                'ordering': ['-accepted_at', '-id'],
                'indexes': [models.Index(fields=['accepted_at'], name='ledger_accepted'), models.Index(fields=['user', 'accepted_at'], name='ledger_user_accepted'), models.Index(fields=['outcome', 'accepted_at'], name='ledger_outcome_accepted')],
                'constraints': [models.CheckConstraint(condition=models.Q(('outcome__in', ['pending', 'done', 'failed', 'abandoned', 'deleted'])), name='ledger_outcome_known'), models.CheckConstraint(condition=models.Q(models.Q(('outcome', 'pending'), ('outcome_at__isnull', True)), models.Q(models.Q(('outcome', 'pending'), _negated=True), ('outcome_at__isnull', False)), _connector='OR'), name='ledger_settled_has_time')],
            },
        ),
    ]
