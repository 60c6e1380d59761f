from __future__ import annotations

from django.conf import settings
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


def absolute_url(request: HttpRequest, path: str) -> str:
    """The public URL of a path of this site: on SITE_URL when it is set, so that links made
    behind a proxy that does not pass the public host on (or on another name) still work."""
    if settings.SITE_URL:
        return settings.SITE_URL.rstrip("/") + path
    return request.build_absolute_uri(path)


def site_url(request: HttpRequest) -> dict:
    """`site_url`, the site's public address without a trailing slash: `{{ site_url }}{{
    link.get_absolute_url }}` is a link to give out (absolute_url)."""
    return {"site_url": SimpleLazyObject(lambda: absolute_url(request, "/").rstrip("/"))}
