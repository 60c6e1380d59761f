from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from ledger.models import LedgerEntry


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """Read only: the ledger is append-only, so nobody adds, edits or deletes an entry here."""

    list_display = [
        "accepted_at",
        "user",
        "generation_link",
        "resolution",
        "credits",
        "money",
        "currency",
        "outcome",
        "outcome_code",
    ]
    list_filter = ["outcome", "resolution"]
    list_select_related = ["user"]
    date_hierarchy = "accepted_at"
    search_fields = ["task_id", "user__username"]
    fields = [
        "user",
        "generation_link",
        "task_id",
        "resolution",
        "credits",
        "money",
        "currency",
        "accepted_at",
        "outcome",
        "outcome_code",
        "outcome_reason",
        "outcome_at",
    ]
    readonly_fields = fields

    @admin.display(description="generation", ordering="generation_pk")
    def generation_link(self, entry: LedgerEntry) -> str:
        if entry.generation_id is None:
            return f"#{entry.generation_pk} (deleted)"
        url = reverse("admin:gallery_generation_change", args=[entry.generation_id])
        return format_html('<a href="{}">#{}</a>', url, entry.generation_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LedgerEntry | None = None) -> bool:
        return False
