"""No URL answers 500, whatever its ids, cursors and filters hold.

Every URL pattern of the site (ours, allauth's and the admin's) is requested by a signed-in
staff member with each odd value in every path parameter and every query parameter any view
reads, as one value and as a list; our own forms get the same values posted. Ids are parsed
by one strict helper (gallery.forms.parse_id, also the `id` path converter), so "²" (which
str.isdigit() takes and int() does not) and ids past a 64-bit integer are simply not found.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.factories import done_generation

ODD_VALUES = [
    "²",
    "-1",
    "0",
    "99999999999999999999999",
    "9223372036854775808",
    "1e3",
    "1.5",
    "\x00",
    "",
    " 1",
    "١٢",
    "x" * 2000,
    "%",
    "../..",
    "2026-13",
    "9999-12-31",
]
# Every name a view of ours reads from a query string, and some that allauth and the admin read.
QUERY_NAMES = [
    "remix", "ids", "before", "q", "status", "favorites", "aspect_ratio", "resolution",
    "month", "sort", "start", "end", "download", "next", "email", "o", "p", "e", "all",
]  # fmt: skip
# Views that change what they are asked to, posted with the same odd values.
POST_NAMES = [
    "ids", "action", "confirm", "favorite", "next", "prompt", "count", "aspect_ratio",
    "resolution", "output_format", "show_prompt", "expires_in_hours", "mode", "decision",
    "email", "expires_in_days", "email_domains",
]  # fmt: skip
OUR_APPS = ("gallery", "accounts", "ledger")
# The sign-out view would end the session the rest of the requests need.
SKIPPED_NAMES = {"account_logout"}


def routes(patterns=None, prefix: str = "", namespace: str = "") -> list[tuple[str, str, str]]:
    """(route, URL name, app) for every pattern, with path converters as `<name>`."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        text = str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += routes(pattern.url_patterns, prefix + text, pattern.namespace or namespace)
        elif isinstance(pattern, URLPattern) and pattern.name not in SKIPPED_NAMES:
            app = (pattern.lookup_str or "").split(".")[0]
            found.append((prefix + text, pattern.name or "", namespace or app))
    return found


def fill(route: str, value: str) -> str | None:
    """The route with `value` in every parameter; None for a regex route it cannot fill."""
    route = re.sub(r"<(?:\w+:)?\w+>", quote(value, safe=""), route)
    if route.startswith("^"):
        route = route.lstrip("^").rstrip("$").replace("\\Z", "")
        if re.search(r"[()\[\]\\*+?|]", route):
            return None
    return "/" + route


# The admin's own views get the values that look like ids (it is Django's, and large).
ADMIN_VALUES = ["²", "-1", "99999999999999999999999", "\x00"]


@pytest.fixture
def staff_client(db, alice) -> Client:
    alice.is_staff = alice.is_superuser = True
    alice.save()
    done_generation(alice)
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    return client


ROUTES = routes()


@pytest.mark.parametrize(
    ("route", "name", "app"), ROUTES, ids=[f"{a}:{n or r}" for r, n, a in ROUTES]
)
def test_it_answers_odd_values_without_a_500(staff_client, route, name, app):
    values = ADMIN_VALUES if app == "admin" else ODD_VALUES
    failures = []
    for value in values:
        path = fill(route, value)
        if path is None:
            continue
        # Each name as one value and as a list: views that read one value take the last.
        query = urlencode([(key, v) for key in QUERY_NAMES for v in ("1", value)])
        response = staff_client.get(f"{path}?{query}")
        if response.status_code >= 500:
            failures.append(f"GET {path[:80]} with {value[:20]!r}: {response.status_code}")
        if app in OUR_APPS or route.startswith("s/"):
            response = staff_client.post(path, {key: ["1", value] for key in POST_NAMES})
            if response.status_code >= 500:
                failures.append(f"POST {path[:80]} with {value[:20]!r}: {response.status_code}")
    assert not failures, "\n".join(failures)
