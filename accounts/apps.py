from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        checks.register(check_mail, checks.Tags.compatibility, deploy=True)


def check_mail(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Password resets, verifications and approval notices go out by mail: a host without a
    mail server would only print them in its log."""
    if settings.EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend":
        return [
            checks.Warning(
                "No outgoing mail is configured: mail is printed to the console.",
                hint="Set EMAIL_URL (smtp://user:password@host:587?tls=1) or EMAIL_HOST.",
                id="accounts.W001",
            )
        ]
    return []
