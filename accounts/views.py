from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from allauth.account.adapter import get_adapter
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.socialaccount.models import SocialAccount
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from accounts.adapter import INVITE_SESSION_KEY, retry_after, signup_refused
from accounts.forms import DecisionForm, InviteForm, PreferencesForm, RegistrationForm
from accounts.models import Approval, Invite, Preferences, Registration
from gallery.context_processors import absolute_url
from gallery.views import wait_words

# The allauth views that limit requests per address or user, by URL name, with the action
# their limit is kept under: the 429 page says when that limit lets the user in again.
RATE_LIMITED_VIEWS = {
    "account_login": "login",
    "account_signup": "signup",
    "account_reset_password": "reset_password",
    "account_reset_password_from_key": "reset_password_from_key",
    "account_change_password": "change_password",
    "account_email": "manage_email",
    "account_reauthenticate": "reauthenticate",
}


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Staff pages are not found for anyone else, as if they did not exist."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_staff:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


@login_not_required
def too_many_requests(request: HttpRequest) -> HttpResponse:
    """allauth's 429 (banana_site.urls.handler429): when the limit that was hit lets this
    address, or this user, try again."""
    name = request.resolver_match.url_name if request.resolver_match else ""
    action = RATE_LIMITED_VIEWS.get(name, "")
    key = request.POST.get("email", "").lower() or None
    seconds = retry_after(request, action, key=key) if action else None
    seconds = seconds or 60
    context = {"wait": wait_words(seconds), "back": request.path}
    response = render(request, "429.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


@require_GET
def account(request: HttpRequest) -> HttpResponse:
    user = request.user
    kinds = set(Authenticator.objects.filter(user=user).values_list("type", flat=True))
    recovery = Authenticator.objects.filter(
        user=user, type=Authenticator.Type.RECOVERY_CODES
    ).first()
    emails = list(EmailAddress.objects.filter(user=user).order_by("-primary", "email"))
    if not emails and user.email:
        # An account made before allauth, or by createsuperuser: its address, unverified.
        emails = [EmailAddress(user=user, email=user.email, primary=True, verified=False)]
    context = {
        "emails": emails,
        # allauth turns two-factor sign-in on only when every address is verified.
        "verified": bool(emails) and all(address.verified for address in emails),
        "totp": Authenticator.Type.TOTP in kinds,
        "recovery_left": len(recovery.wrap().get_unused_codes()) if recovery else None,
        "sso_enabled": bool(settings.OIDC_SERVER_URL),
        "sso_accounts": SocialAccount.objects.filter(user=user),
        "preferences_form": PreferencesForm(instance=Preferences.of(user)),
    }
    return render(request, "accounts/account.html", context)


@require_POST
def preferences(request: HttpRequest) -> HttpResponse:
    # A checkbox left unticked is absent from the POST: the form reads that as off.
    form = PreferencesForm(request.POST, instance=Preferences.of(request.user))
    form.save()
    if form.instance.file_provenance:
        messages.success(request, "Saved: downloads carry the prompt and settings.")
    else:
        messages.success(request, "Saved: downloads are the original files, with nothing added.")
    return redirect(reverse("accounts:account") + "#files")


@login_not_required
@require_GET
def waiting(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/waiting.html")


@login_not_required
@require_GET
def refused(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/refused.html", status=403)


@login_not_required
@require_GET
def invite(request: HttpRequest, token: str) -> HttpResponse:
    """An invite link: remembered in the session, then on to the sign-up page, which takes
    it (and fills in the address it is for)."""
    found = Invite.objects.filter(token=token).first()
    if found is None:
        return signup_refused(request, "invite_unknown", status=404)
    if found.is_used:
        return signup_refused(request, "invite_used", status=410)
    if found.is_expired:
        return signup_refused(request, "invite_expired", status=410)
    if request.user.is_authenticated:
        messages.info(request, "You already have an account: that invite is for someone new.")
        return redirect("gallery:index")
    request.session[INVITE_SESSION_KEY] = found.token
    url = reverse("account_signup")
    return redirect(f"{url}?{urlencode({'email': found.email})}" if found.email else url)


def _staff_context(request: HttpRequest, **forms) -> dict:
    return {
        "registration_form": RegistrationForm(instance=Registration.get()),
        "invite_form": InviteForm(),
        "pending": Approval.objects.pending().select_related("user"),
        "decided": Approval.objects.decided()
        .select_related("user", "decided_by")
        .order_by("-decided_at")[:20],
        "invites": [
            (invite, absolute_url(request, invite.get_absolute_url()))
            for invite in Invite.objects.select_related("used_by")[:50]
        ],
        **forms,
    }


@staff_only
@require_GET
def staff(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/staff.html", _staff_context(request))


@staff_only
@require_POST
def staff_registration(request: HttpRequest) -> HttpResponse:
    form = RegistrationForm(request.POST, instance=Registration.get())
    if not form.is_valid():
        context = _staff_context(request, registration_form=form)
        return render(request, "accounts/staff.html", context, status=400)
    registration = form.save()
    messages.success(request, f"Saved: {registration.get_mode_display()}.")
    return redirect("accounts:staff")


@staff_only
@require_POST
def staff_invite_create(request: HttpRequest) -> HttpResponse:
    form = InviteForm(request.POST)
    if not form.is_valid():
        context = _staff_context(request, invite_form=form)
        return render(request, "accounts/staff.html", context, status=400)
    created = form.save_for(request.user)
    if created.email:
        get_adapter(request).send_mail(
            "accounts/email/invite",
            created.email,
            {"invite": created, "invite_url": absolute_url(request, created.get_absolute_url())},
        )
        messages.success(request, f"Invite made and mailed to {created.email}.")
    else:
        messages.success(request, "Invite made: copy its link from the list below.")
    return redirect("accounts:staff")


@staff_only
@require_POST
def staff_invite_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    withdrawn, _ = Invite.objects.filter(pk=pk, used_at__isnull=True).delete()
    if withdrawn:
        messages.success(request, "Invite withdrawn: its link no longer works.")
    return redirect("accounts:staff")


@staff_only
@require_POST
def staff_decide(request: HttpRequest, pk: int) -> HttpResponse:
    approval = get_object_or_404(Approval.objects.select_related("user"), pk=pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return redirect("accounts:staff")
    decision = form.cleaned_data["decision"]
    if not approval.decide(decision, by=request.user):
        messages.info(request, f"{approval.user.username} was already decided on.")
        return redirect("accounts:staff")
    user = approval.user
    if user.email:
        get_adapter(request).send_mail(
            f"accounts/email/{decision}",
            user.email,
            {"user": user, "login_url": absolute_url(request, reverse("account_login"))},
        )
    word = "approved" if decision == Approval.Status.APPROVED else "refused"
    told = " and told by email" if user.email else " (no email address to tell them)"
    messages.success(request, f"{user.username} is {word}{told}.")
    return redirect("accounts:staff")
