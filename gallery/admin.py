from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from gallery import tasks
from gallery.models import Generation, Image, LimitReached, ProviderAccount


@admin.register(ProviderAccount)
class ProviderAccountAdmin(admin.ModelAdmin):
    list_display = ["__str__", "pause_message", "paused_at", "probe_at", "create_not_before"]
    readonly_fields = [
        "pause_reason",
        "pause_message",
        "paused_at",
        "probe_at",
        "create_not_before",
        "query_not_before",
        "updated_at",
    ]
    fields = readonly_fields
    actions = ["resume_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Resume submission now (after fixing the key or adding credits)")
    def resume_now(self, request: HttpRequest, queryset: QuerySet[ProviderAccount]) -> None:
        for account in queryset:
            account.resume()
        tasks.wake_submission()
        self.message_user(request, "Submission resumed; queued generations are on their way.")


class ImageInline(admin.TabularInline):
    model = Image
    extra = 0
    fields = ["index", "file", "width", "height", "bytes", "format", "sha256"]
    readonly_fields = fields


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ["pk", "owner", "short_prompt", "status", "resolution", "created_at", "task_id"]
    list_filter = ["status", "resolution", "output_format"]
    search_fields = ["prompt", "task_id", "request_id", "owner__username"]
    raw_id_fields = ["owner"]
    readonly_fields = [
        "request_id",
        "task_id",
        "provider_state",
        "result_urls",
        "fail_code",
        "fail_message",
        "submitted_at",
        "provider_created_at",
        "provider_completed_at",
        "cost_time_ms",
        "finished_at",
        "submit_attempts",
        "poll_count",
        "poll_errors",
        "download_attempts",
        "retry_at",
        "next_poll_at",
        "last_polled_at",
        "lease_until",
    ]
    inlines = [ImageInline]
    actions = ["retry_failed"]

    @admin.display(description="prompt")
    def short_prompt(self, generation: Generation) -> str:
        return generation.prompt[:60]

    # Deleting here deletes as the gallery does: the files too, and the ledger entries stay,
    # a pending one settled as deleted.
    def delete_model(self, request: HttpRequest, obj: Generation) -> None:
        Generation.objects.filter(pk=obj.pk).delete_with_files()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Generation]) -> None:
        queryset.delete_with_files()

    @admin.action(description="Retry the selected failed generations")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Generation]) -> None:
        # Each retry is a new task, charged to its owner: their limits apply as to their own.
        retried, refused = 0, []
        for generation in queryset.finished().select_related("owner"):
            try:
                retried += generation.retry()
            except LimitReached as limit:
                refused.append(f"#{generation.pk} ({generation.owner}): {limit.message}")
        tasks.wake_submission()
        self.message_user(request, f"{retried} generation(s) queued again.", messages.SUCCESS)
        for refusal in refused:
            self.message_user(request, f"Not retried: {refusal}", messages.WARNING)
