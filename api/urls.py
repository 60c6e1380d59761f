from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, include, path

from api import views
from api.api import api, error_response

app_name = "api"


def _api_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The API signs its requests in by token, so the site's login redirect must not stand in
    front of it; and its 405 is in the API's error shape like every other error."""

    @login_not_required
    @wraps(view)  # keeps ninja's csrf_exempt: a token, not a cookie, signs these requests in
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if response.status_code == 405:
            allowed = response["Allow"]
            message = f"{request.method} is not allowed here; use {allowed}."
            response = error_response(request, 405, "method_not_allowed", message)
            response["Allow"] = allowed
        return response

    return wrapper


@login_not_required
def _no_such_endpoint(request: HttpRequest, rest: str) -> HttpResponse:
    return error_response(request, 404, "not_found", "There is no such endpoint: see /api/v1/docs.")


def _api_urls() -> list[URLPattern]:
    patterns, _, _ = api.urls
    for pattern in patterns:
        pattern.callback = _api_view(pattern.callback)
    return [*patterns, path("<path:rest>", _no_such_endpoint)]


urlpatterns = [
    path("accounts/api-tokens/", views.tokens, name="tokens"),
    path("accounts/api-tokens/<int:pk>/revoke/", views.revoke, name="revoke"),
]

# Outside the "api" namespace: ninja names its own (api-v1).
api_urlpatterns = [path("api/v1/", include((_api_urls(), "ninja"), namespace="api-v1"))]
