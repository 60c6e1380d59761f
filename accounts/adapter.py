"""allauth's hooks: who may sign up (the registration mode, invites, email domains), who may
sign in (approval), and throttled sign-ins told when they can try again."""

from __future__ import annotations

import time

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.stages import LoginStage
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.core.internal import ratelimit
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django import forms
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import get_text_list

from accounts.models import Approval, Invite, Registration
from gallery.views import wait_words

INVITE_SESSION_KEY = "accounts_invite"


def session_invite(request: HttpRequest) -> Invite | None:
    """The usable invite whose link this browser opened, if any."""
    token = request.session.get(INVITE_SESSION_KEY)
    return Invite.objects.usable().filter(token=token).first() if token else None


def signup_refused(
    request: HttpRequest, why: str, status: int = 403, detail: str = ""
) -> HttpResponse:
    context = {"why": why, "detail": detail, "registration": Registration.get()}
    return render(request, "accounts/signup_refused.html", context, status=status)


def check_signup_open(request: HttpRequest) -> None:
    """Stop here, with a page that says why, when the mode lets nobody (or not this browser)
    sign up."""
    mode = Registration.get().mode
    if mode == Registration.Mode.CLOSED:
        raise ImmediateHttpResponse(signup_refused(request, "closed"))
    if mode == Registration.Mode.INVITE and session_invite(request) is None:
        raise ImmediateHttpResponse(signup_refused(request, "invite"))


def check_email(request: HttpRequest, email: str) -> None:
    """An invite for one address admits that address only (whatever the domain list says:
    staff chose it); otherwise the address must be at one of the allowed domains."""
    registration = Registration.get()
    invite = session_invite(request) if registration.mode == Registration.Mode.INVITE else None
    if invite and invite.email:
        if not invite.admits(email):
            raise forms.ValidationError(
                "This invite is for another email address: sign up with the address it was sent to."
            )
    elif not registration.allows_email(email):
        domains = get_text_list([f"@{d}" for d in registration.domains], "or")
        raise forms.ValidationError(f"Sign-up here needs an email address ending in {domains}.")


def admit(request: HttpRequest, user) -> None:
    """What the mode asks of a new account, in the transaction that saves it: an invite is
    used up (if another sign-up took it first, the account is not made), and in approval mode
    the account waits for staff."""
    mode = Registration.get().mode
    if mode == Registration.Mode.INVITE:
        invite = session_invite(request)
        if invite is None or not invite.use(user):
            raise ImmediateHttpResponse(signup_refused(request, "invite_used", status=410))
        del request.session[INVITE_SESSION_KEY]
    elif mode == Registration.Mode.APPROVAL:
        Approval.objects.create(user=user)


def retry_after(request: HttpRequest, action: str, key: str | None = None) -> int | None:
    """Seconds until allauth's limit on `action` lets this request through again (the longest
    of its full limits), or None if none is full or it cannot be told."""
    now = time.time()
    waits = []
    for rate in ratelimit.get_rates(app="allauth.account", action=action):
        if (rate.per == "key" and key is None) or (
            rate.per == "user" and not request.user.is_authenticated
        ):
            continue
        cache_key = ratelimit.get_cache_key(
            request, app="allauth.account", action=action, rate=rate, key=key
        )
        history = [t for t in cache.get(cache_key, []) if t > now - rate.duration]
        if len(history) >= rate.amount:
            waits.append(min(history) + rate.duration - now)
    return max(1, round(max(waits))) if waits else None


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        check_signup_open(request)
        return True

    def clean_email(self, email: str) -> str:
        email = super().clean_email(email)
        check_email(self.request, email)
        return email

    def save_user(self, request: HttpRequest, user, form, commit: bool = True):
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=True)
            admit(request, user)
        return user

    def get_login_stages(self) -> list[str]:
        # After the email verification stage, so that a new account in approval mode gets
        # its verification mail (and staff see a verified address), before two-factor.
        stages = super().get_login_stages()
        at = stages.index("allauth.account.stages.EmailVerificationStage") + 1
        return [*stages[:at], "accounts.adapter.ApprovalStage", *stages[at:]]

    def pre_authenticate(self, request: HttpRequest, **credentials) -> None:
        try:
            super().pre_authenticate(request, **credentials)
        except forms.ValidationError as error:
            key = self._get_login_attempts_cache_key(request, **credentials)
            seconds = retry_after(request, "login_failed", key=key) or 60
            raise forms.ValidationError(
                "Too many failed sign-ins in a short time. You can try again in "
                f"{wait_words(seconds)}, or reset your password now.",
                code="too_many_login_attempts",
            ) from error


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin) -> bool:
        check_signup_open(request)
        email = sociallogin.user.email
        if email:
            try:
                check_email(request, email)
            except forms.ValidationError as error:
                refused = signup_refused(request, "email", detail=error.messages[0])
                raise ImmediateHttpResponse(refused) from None
        return True

    def save_user(self, request: HttpRequest, sociallogin, form=None):
        with transaction.atomic():
            user = super().save_user(request, sociallogin, form)
            admit(request, user)
        return user


class ApprovalStage(LoginStage):
    """Keeps an account that waits for approval, or was refused, from signing in: it sees a
    page that says so instead, and no session is made."""

    key = "approval"

    def handle(self):
        status = Approval.status_of(self.login.user)
        if status == Approval.Status.PENDING:
            return redirect("accounts:waiting"), False
        if status == Approval.Status.REFUSED:
            return redirect("accounts:refused"), False
        return None, True
