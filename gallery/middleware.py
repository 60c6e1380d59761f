from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse


def refuse_nul_characters(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Answer 400 to a URL with a NUL character in its path or query. No id, token or filter
    of this site holds one, and PostgreSQL cannot even compare a text with one: a lookup of
    `/s/%00/` or of the admin's `/admin/…/%00/change/` would fail as a 500 in the database."""

    def middleware(request: HttpRequest) -> HttpResponse:
        query = (part for key, values in request.GET.lists() for part in (key, *values))
        if "\x00" in request.path or any("\x00" in part for part in query):
            raise BadRequest("A NUL character in the URL.")
        return get_response(request)

    return middleware
