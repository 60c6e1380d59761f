from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from gallery.models import ProviderAccount


def _pause_message() -> str:
    account = ProviderAccount.get()
    return account.user_message if account.is_paused else ""


def provider_status(request: HttpRequest) -> dict:
    """The pause banner: every signed-in page says when generation is paused, and why.

    Lazy, so that fragments which never show the banner cost no query.
    """
    if not request.user.is_authenticated:
        return {}
    return {"provider_pause": SimpleLazyObject(_pause_message)}
