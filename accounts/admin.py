from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from accounts.models import Approval, Invite, Registration


@admin.register(Registration)
class RegistrationAdmin(admin.ModelAdmin):
    list_display = ["mode", "email_domains", "updated_at"]
    fields = ["mode", "email_domains"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not Registration.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    list_display = ["pk", "email", "created_by", "created_at", "expires_at", "used_by", "used_at"]
    list_filter = ["used_at"]
    search_fields = ["email", "used_by__username"]
    fields = ["token", "email", "expires_at", "created_by", "created_at", "used_by", "used_at"]
    readonly_fields = ["token", "created_by", "created_at", "used_by", "used_at"]

    def save_model(self, request: HttpRequest, obj: Invite, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    list_display = ["user", "status", "created_at", "decided_by", "decided_at"]
    list_filter = ["status"]
    search_fields = ["user__username", "user__email"]
    raw_id_fields = ["user", "decided_by"]
    # Decisions are made on the sign-ups page, which also tells the user by email.
    readonly_fields = ["status", "created_at", "decided_at", "decided_by"]
