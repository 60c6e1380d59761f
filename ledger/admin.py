from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from gallery import tasks
from ledger.models import GroupLimits, LedgerEntry, UserLimits


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


# Limits: per user and per group, on their own lists and on each user's and group's page. Any
# change may make room for work held over a budget, which then goes (gallery.tasks).


class ReleasesHeldWork:
    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        tasks.release_over_budget()

    def delete_model(self, request: HttpRequest, obj) -> None:
        super().delete_model(request, obj)
        tasks.release_over_budget()

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        super().delete_queryset(request, queryset)
        tasks.release_over_budget()


LIMIT_FIELDS = ["monthly_credits", "max_pending", "daily_generations"]


@admin.register(UserLimits)
class UserLimitsAdmin(ReleasesHeldWork, admin.ModelAdmin):
    list_display = ["user", *LIMIT_FIELDS]
    search_fields = ["user__username", "user__email"]
    raw_id_fields = ["user"]
    fields = ["user", *LIMIT_FIELDS]


@admin.register(GroupLimits)
class GroupLimitsAdmin(ReleasesHeldWork, admin.ModelAdmin):
    list_display = ["group", *LIMIT_FIELDS]
    search_fields = ["group__name"]
    fields = ["group", *LIMIT_FIELDS]


class UserLimitsInline(admin.StackedInline):
    model = UserLimits
    can_delete = True
    fields = LIMIT_FIELDS
    verbose_name_plural = "limits (this user's own: they win over the groups' and the defaults)"


class GroupLimitsInline(admin.StackedInline):
    model = GroupLimits
    fields = LIMIT_FIELDS
    verbose_name_plural = "limits of the members (each gets the most generous of their groups')"


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserWithLimitsAdmin(ReleasesHeldWork, UserAdmin):
    inlines = [*UserAdmin.inlines, UserLimitsInline]


@admin.register(Group)
class GroupWithLimitsAdmin(ReleasesHeldWork, GroupAdmin):
    inlines = [*GroupAdmin.inlines, GroupLimitsInline]
