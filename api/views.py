from __future__ import annotations

from django.contrib import messages
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from api.forms import ApiTokenForm
from api.models import ApiToken


def _tokens_page(
    request: HttpRequest, form: ApiTokenForm, status: int = 200, **extra
) -> HttpResponse:
    # The ones in use first, newest first; then the revoked ones.
    tokens = ApiToken.objects.owned_by(request.user).order_by(
        F("revoked_at").desc(nulls_first=True), "-created_at"
    )
    context = {"form": form, "tokens": tokens, **extra}
    return render(request, "api/tokens.html", context, status=status)


@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """The user's API tokens; a POST makes one and shows its secret, this once."""
    if request.method == "GET":
        return _tokens_page(request, ApiTokenForm(user=request.user))
    form = ApiTokenForm(request.POST, user=request.user)
    if not form.is_valid():
        return _tokens_page(request, form, status=400)
    token, secret = form.save()
    # Rendered, not redirected to: the secret is never stored, in the session or anywhere.
    response = _tokens_page(request, ApiTokenForm(user=request.user), created=token, secret=secret)
    add_never_cache_headers(response)
    return response


@require_POST
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.owned_by(request.user), pk=pk)
    token.revoke()
    messages.success(request, f"“{token.name}” is revoked: requests with it are refused at once.")
    return redirect("api:tokens")
