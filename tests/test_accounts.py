"""Accounts through django-allauth: sign-up, sign-in by username or email, password reset and
change, email verification, two-factor sign-in, registration modes and sign-in throttling."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY, format_hotp_value, hotp_value
from django.contrib.auth.models import User
from django.core import checks, mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Approval, Invite, Registration
from banana_site.settings import email_url
from gallery.views import wait_words

PASSWORD = "a-long-pass-phrase"


def sign_up(client: Client, username: str = "dora", email: str = "", **data):
    return client.post(
        reverse("account_signup"),
        {
            "username": username,
            "email": email or f"{username}@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            **data,
        },
    )


def log_in(client: Client, login: str, password: str = PASSWORD, address: str = "127.0.0.1"):
    return client.post(
        reverse("account_login"), {"login": login, "password": password}, REMOTE_ADDR=address
    )


def signed_in(client: Client) -> bool:
    return client.get(reverse("accounts:account")).status_code == 200


def set_registration(mode: str, domains: str = "") -> None:
    Registration.objects.update_or_create(pk=1, defaults={"mode": mode, "email_domains": domains})


def link_in(message) -> str:
    """The path of the first link to this site in a mail."""
    return re.search(r"https?://[^/\s]+(/\S+)", message.body).group(1)


@pytest.fixture
def dora(db) -> User:
    user = User.objects.create_user("dora", "dora@example.com", PASSWORD)
    EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=True)
    return user


@pytest.fixture
def staff(db) -> User:
    return User.objects.create_user("sam", "sam@example.com", PASSWORD, is_staff=True)


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


# Sign-up, sign-in, sign-out


def test_it_serves_a_styled_login_page(client, db):
    response = client.get(reverse("account_login"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "css/app.css" in html and 'class="auth-card"' in html
    assert 'name="login"' in html and 'name="password"' in html
    assert "Forgot your password?" in html and reverse("account_signup") in html


def test_it_signs_up_and_logs_in(client, db):
    response = sign_up(client, "dora", "dora@example.com")
    assert response.status_code == 302
    assert response["Location"] == reverse("gallery:index")
    assert client.get("/").status_code == 200
    user = User.objects.get(username="dora")
    assert user.email == "dora@example.com"
    # Verification is optional by default: a mail asks for it, but the user is in already.
    assert mail.outbox[0].to == ["dora@example.com"]


def test_it_explains_a_bad_signup(client, db):
    response = sign_up(client, "dora", password2="another-phrase")
    assert response.status_code == 200
    assert "You must type the same password each time." in response.content.decode()
    response = sign_up(client, "erin", email="not-an-address")
    assert "Enter a valid email address." in response.content.decode()
    assert not User.objects.exists()


def test_it_logs_in_by_username_or_by_email(dora):
    for login in ["dora", "dora@example.com", "DORA@example.com"]:
        client = Client()
        response = log_in(client, login)
        assert response.status_code == 302, login
        assert response["Location"] == reverse("gallery:index")
        assert signed_in(client)
    response = log_in(Client(), "dora", "wrong")
    assert "The username and/or password you specified are not correct." in (
        response.content.decode()
    )


def test_it_logs_out_by_post_only(client, alice):
    client.force_login(alice)
    response = client.get(reverse("account_logout"))
    assert response.status_code == 200 and "Log out" in response.content.decode()
    assert signed_in(client)
    response = client.post(reverse("account_logout"))
    assert response.status_code == 302 and response["Location"] == reverse("account_login")
    assert client.get("/").status_code == 302


def test_it_changes_the_password(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("account_change_password"),
        {"oldpassword": "password-alice", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_it_shows_the_account_page(client, dora):
    client.force_login(dora)
    html = client.get(reverse("accounts:account")).content.decode()
    assert "dora" in html and "dora@example.com" in html
    for name in ["account_email", "account_change_password", "mfa_activate_totp"]:
        assert reverse(name) in html
    assert "Single sign-on" not in html  # OIDC_SERVER_URL is not set
    assert reverse("accounts:account") in client.get("/").content.decode()  # in the nav


def test_it_lets_anonymous_users_reach_the_account_pages_that_need_no_login(client, db):
    for name in [
        "account_login",
        "account_signup",
        "account_reset_password",
        "account_reset_password_done",
        "account_email_verification_sent",
        "account_inactive",
        "accounts:waiting",
    ]:
        assert client.get(reverse(name)).status_code == 200, name
    assert client.get(reverse("accounts:refused")).status_code == 403
    bad_key = reverse("account_reset_password_from_key", args=["1", "bad-key"])
    assert client.get(bad_key).status_code == 200
    for name in ["accounts:account", "account_email", "mfa_index", "accounts:staff"]:
        assert client.get(reverse(name))["Location"].startswith(reverse("account_login")), name


def test_it_resets_a_password_through_the_mail(client, dora):
    response = client.post(reverse("account_reset_password"), {"email": "dora@example.com"})
    assert response.status_code == 302
    (message,) = mail.outbox
    assert message.to == ["dora@example.com"] and "Banana Gallery" in message.subject
    response = client.get(link_in(message))  # the key moves to the session, out of the URL
    assert response.status_code == 302
    form_url = response["Location"]
    response = client.post(
        form_url, {"password1": "a-new-pass-phrase", "password2": "a-new-pass-phrase"}
    )
    assert response.status_code == 302
    assert not signed_in(client)
    assert log_in(client, "dora", "a-new-pass-phrase").status_code == 302
    assert signed_in(client)
    # The link works once.
    assert "password reset link was invalid" in Client().get(link_in(message)).content.decode()


def test_it_can_require_a_verified_address(client, db, settings):
    settings.ACCOUNT_EMAIL_VERIFICATION = "mandatory"
    response = sign_up(client, "dora")
    assert response["Location"] == reverse("account_email_verification_sent")
    assert not signed_in(client)
    (message,) = mail.outbox
    response = client.post(link_in(message))
    assert response.status_code == 302
    assert signed_in(client)
    assert User.objects.get().emailaddress_set.get().verified


# Two-factor sign-in


def totp_code(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def turn_on_totp(client: Client) -> str:
    """Turn on TOTP for the signed-in user; the secret."""
    response = client.get(reverse("mfa_activate_totp"))
    # Turning it on is one of the changes that ask for the password again.
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    response = client.post(response["Location"], {"password": PASSWORD})
    assert response["Location"] == reverse("mfa_activate_totp")
    assert client.get(reverse("mfa_activate_totp")).status_code == 200
    secret = client.session[SECRET_SESSION_KEY]
    response = client.post(reverse("mfa_activate_totp"), {"code": totp_code(secret)})
    assert response.status_code == 302
    return secret


def test_it_signs_in_with_a_totp_code_after_the_password(client, dora):
    log_in(client, "dora")
    secret = turn_on_totp(client)
    assert "Two-factor sign-in" in client.get(reverse("accounts:account")).content.decode()
    client.post(reverse("account_logout"))

    response = log_in(client, "dora")
    assert response["Location"] == reverse("mfa_authenticate")
    assert not signed_in(client)  # the password alone is not enough
    response = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert "Incorrect code." in response.content.decode()
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response["Location"] == reverse("gallery:index")
    assert signed_in(client)


def test_it_takes_a_recovery_code_once(client, dora):
    log_in(client, "dora")
    turn_on_totp(client)
    codes = Authenticator.objects.get(type="recovery_codes").wrap().get_unused_codes()
    client.post(reverse("account_logout"))

    log_in(client, "dora")
    client.post(reverse("mfa_authenticate"), {"code": codes[0]})
    assert signed_in(client)
    html = client.get(reverse("accounts:account")).content.decode()
    assert f"{len(codes) - 1} recovery codes are left" in html
    client.post(reverse("account_logout"))

    log_in(client, "dora")
    response = client.post(reverse("mfa_authenticate"), {"code": codes[0]})
    assert "Incorrect code." in response.content.decode()
    assert not signed_in(client)


# Registration modes


def test_it_seeds_the_registration_from_the_environment(db, settings):
    settings.REGISTRATION_MODE = "invite"
    settings.REGISTRATION_EMAIL_DOMAINS = ["example.com", "example.org"]
    registration = Registration.get()
    assert (registration.mode, registration.domains) == ("invite", ["example.com", "example.org"])
    settings.REGISTRATION_MODE = "closed"
    assert Registration.get().mode == "invite"  # the stored setting wins from then on


def test_it_refuses_sign_up_when_closed(client, db):
    set_registration("closed")
    for response in [client.get(reverse("account_signup")), sign_up(client)]:
        assert response.status_code == 403
        assert "Sign-up is closed" in response.content.decode()
    assert not User.objects.exists()


def test_it_enforces_the_email_domains(client, db):
    set_registration("open", "example.com\nexample.org")
    response = sign_up(client, "dora", "dora@elsewhere.net")
    assert "needs an email address ending in @example.com or @example.org" in (
        response.content.decode()
    )
    assert sign_up(client, "erin", "erin@sub.example.net").status_code == 200
    assert not User.objects.exists()
    assert sign_up(client, "dora", "Dora@Example.ORG").status_code == 302
    assert User.objects.get().username == "dora"


def test_it_refuses_sign_up_without_a_valid_invite(client, db):
    set_registration("invite")
    for response in [client.get(reverse("account_signup")), sign_up(client)]:
        assert response.status_code == 403
        assert "Sign-up is by invitation" in response.content.decode()
    response = client.get(reverse("accounts:invite", args=["no-such-invite"]))
    assert response.status_code == 404
    assert "This invite link does not work" in response.content.decode()
    assert sign_up(client).status_code == 403
    assert not User.objects.exists()


def test_it_signs_up_once_with_an_invite(client, staff):
    set_registration("invite")
    invite = Invite.objects.create(created_by=staff)
    response = client.get(invite.get_absolute_url())
    assert response["Location"] == reverse("account_signup")
    assert client.get(reverse("account_signup")).status_code == 200
    assert sign_up(client, "dora").status_code == 302
    invite.refresh_from_db()
    assert invite.used_by.username == "dora" and invite.is_used

    client.post(reverse("account_logout"))
    assert sign_up(client, "erin").status_code == 403  # not twice from the same browser
    response = Client().get(invite.get_absolute_url())
    assert response.status_code == 410
    assert "This invite was already used" in response.content.decode()
    assert set(User.objects.values_list("username", flat=True)) == {"sam", "dora"}


def test_it_lets_one_of_two_sign_ups_with_the_same_invite_through(staff):
    set_registration("invite")
    invite = Invite.objects.create(created_by=staff)
    first, second = Client(), Client()
    first.get(invite.get_absolute_url())
    second.get(invite.get_absolute_url())
    assert sign_up(first, "dora").status_code == 302
    response = sign_up(second, "erin")
    assert response.status_code in (403, 410)
    assert not User.objects.filter(username="erin").exists()


def test_it_refuses_an_expired_invite(client, staff):
    set_registration("invite")
    invite = Invite.objects.create(expires_at=timezone.now() + timedelta(hours=1))
    client.get(invite.get_absolute_url())
    Invite.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert sign_up(client, "dora").status_code == 403
    response = Client().get(invite.get_absolute_url())
    assert response.status_code == 410 and "This invite has expired" in response.content.decode()
    assert not User.objects.filter(username="dora").exists()


def test_it_binds_an_invite_to_its_address(client, db):
    set_registration("invite", "example.com")
    invite = Invite.objects.create(email="guest@partner.org")
    response = client.get(invite.get_absolute_url())
    assert response["Location"] == reverse("account_signup") + "?email=guest%40partner.org"
    assert 'value="guest@partner.org"' in client.get(response["Location"]).content.decode()
    response = sign_up(client, "dora", "dora@example.com")
    assert "This invite is for another email address" in response.content.decode()
    # The address staff chose is let in, whatever the domain list says.
    assert sign_up(client, "guest", "Guest@partner.org").status_code == 302
    assert Invite.objects.get().used_by.username == "guest"


def test_it_keeps_a_new_account_out_until_approved(client, staff_client):
    set_registration("approval")
    response = sign_up(client, "dora")
    assert response["Location"] == reverse("accounts:waiting")
    assert not signed_in(client)
    assert log_in(client, "dora")["Location"] == reverse("accounts:waiting")
    assert not signed_in(client)
    html = staff_client.get(reverse("accounts:staff")).content.decode()
    assert "Waiting for approval" in html and "dora@example.com" in html
    # The address is asked to be verified meanwhile, as in every mode.
    assert [m.to for m in mail.outbox] == [["dora@example.com"]]

    mail.outbox.clear()
    approval = Approval.objects.get(user__username="dora")
    url = reverse("accounts:staff_decide", args=[approval.pk])
    assert staff_client.post(url, {"decision": "approved"}).status_code == 302
    (message,) = mail.outbox
    assert message.to == ["dora@example.com"] and "approved" in message.subject
    assert reverse("account_login") in message.body
    assert log_in(client, "dora")["Location"] == reverse("gallery:index")
    assert signed_in(client)


def test_it_verifies_the_address_before_it_says_the_account_waits(client, db, settings):
    settings.ACCOUNT_EMAIL_VERIFICATION = "mandatory"
    set_registration("approval")
    assert sign_up(client, "dora")["Location"] == reverse("account_email_verification_sent")
    (message,) = mail.outbox
    assert client.post(link_in(message))["Location"] == reverse("accounts:waiting")
    assert not signed_in(client)
    assert User.objects.get().emailaddress_set.get().verified


def test_it_keeps_a_refused_account_out(client, staff_client):
    set_registration("approval")
    sign_up(client, "dora")
    mail.outbox.clear()
    approval = Approval.objects.get(user__username="dora")
    staff_client.post(reverse("accounts:staff_decide", args=[approval.pk]), {"decision": "refused"})
    (message,) = mail.outbox
    assert message.to == ["dora@example.com"] and "not approved" in message.subject
    response = log_in(client, "dora")
    assert response["Location"] == reverse("accounts:refused")
    assert "This account was not approved" in client.get(response["Location"]).content.decode()
    assert not signed_in(client)
    # A decision is made once: approving afterwards changes nothing and mails nobody.
    staff_client.post(
        reverse("accounts:staff_decide", args=[approval.pk]), {"decision": "approved"}
    )
    assert Approval.status_of(approval.user) == "refused" and len(mail.outbox) == 1


def test_it_counts_existing_users_and_staff_as_approved(alice, staff):
    set_registration("approval")
    Approval.objects.create(user=staff)  # staff are let in even with a pending row
    for username, password in [("alice", "password-alice"), ("sam", PASSWORD)]:
        client = Client()
        assert log_in(client, username, password)["Location"] == reverse("gallery:index")
        assert signed_in(client)


# The staff page


def test_it_changes_the_registration_at_run_time(staff_client, client):
    response = staff_client.post(
        reverse("accounts:staff_registration"),
        {"mode": "closed", "email_domains": "Example.com, @example.org\nexample.com"},
    )
    assert response.status_code == 302
    registration = Registration.get()
    assert registration.mode == "closed"
    assert registration.email_domains == "example.com\nexample.org"
    assert sign_up(client).status_code == 403
    response = staff_client.post(
        reverse("accounts:staff_registration"), {"mode": "open", "email_domains": "not a domain"}
    )
    assert response.status_code == 400
    assert "is not a domain" in response.content.decode()
    assert Registration.get().mode == "closed"


def test_it_makes_mails_and_withdraws_invites(staff_client):
    url = reverse("accounts:staff_invite_create")
    response = staff_client.post(url, {"email": "guest@partner.org", "expires_in_days": "7"})
    assert response.status_code == 302
    invite = Invite.objects.get()
    assert invite.email == "guest@partner.org" and invite.created_by.username == "sam"
    assert invite.expires_at - timezone.now() > timedelta(days=6)
    (message,) = mail.outbox
    assert message.to == ["guest@partner.org"] and link_in(message) == invite.get_absolute_url()
    staff_client.post(url, {"email": "", "expires_in_days": ""})
    assert len(mail.outbox) == 1 and Invite.objects.count() == 2
    html = staff_client.get(reverse("accounts:staff")).content.decode()
    assert invite.get_absolute_url() in html and "Never expires" in html

    staff_client.post(reverse("accounts:staff_invite_withdraw", args=[invite.pk]))
    assert not Invite.objects.filter(pk=invite.pk).exists()


def test_it_checks_staff(client, alice, dora):
    set_registration("approval")
    approval = Approval.objects.create(user=dora)
    invite = Invite.objects.create()
    client.force_login(alice)
    assert client.get(reverse("accounts:staff")).status_code == 404
    for url, data in [
        (reverse("accounts:staff_registration"), {"mode": "open", "email_domains": ""}),
        (reverse("accounts:staff_invite_create"), {"email": ""}),
        (reverse("accounts:staff_invite_withdraw", args=[invite.pk]), {}),
        (reverse("accounts:staff_decide", args=[approval.pk]), {"decision": "approved"}),
    ]:
        assert client.post(url, data).status_code == 404, url
    assert Registration.get().mode == "approval"
    assert Invite.objects.count() == 1 and Approval.status_of(dora) == "pending"
    assert "Sign-ups" not in client.get("/").content.decode()


# Throttling


def test_it_stops_guesses_at_one_account_from_many_addresses(db, dora, settings):
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "100/m/ip,3/3s/key"}
    started = time.time()
    responses = [log_in(Client(), "dora", f"guess-{i}", f"10.0.0.{i}") for i in range(6)]
    html = [r.content.decode() for r in responses]
    assert all("not correct" in h for h in html[:3])
    assert all("Too many failed sign-ins" in h for h in html[3:])
    # Meanwhile the right password is refused too, so guessing it then tells nothing...
    client = Client()
    page = log_in(client, "dora", address="192.0.2.1").content.decode()
    spent = time.time() - started
    assert "Too many failed sign-ins" in page
    # The window opened at the first guess: what is left of it, however slow the guesses were.
    left = re.search(r"You can try again in about (\d+) seconds?", page)
    assert left and max(1, round(3 - spent)) <= int(left[1]) <= 3
    assert not signed_in(client)
    # ...and when the window has passed the user signs in.
    time.sleep(3.1)
    assert log_in(client, "dora", address="192.0.2.1").status_code == 302
    assert signed_in(client)


def test_it_slows_guesses_from_one_address_without_blocking_others(db, dora, settings):
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "3/m/ip,100/m/key"}
    for i in range(3):
        log_in(Client(), f"user{i}", "guess", "10.0.0.1")
    response = log_in(Client(), "dora", address="10.0.0.1")
    assert "Too many failed sign-ins" in response.content.decode()
    client = Client()
    assert log_in(client, "dora", address="10.0.0.2").status_code == 302
    assert signed_in(client)


def test_it_answers_too_many_sign_ins_from_one_address_with_a_friendly_page(db, dora, settings):
    settings.ACCOUNT_RATE_LIMITS = {"login": "2/m/ip"}
    for _ in range(2):
        assert log_in(Client(), "dora", "wrong").status_code == 200
    response = log_in(Client(), "dora")
    assert response.status_code == 429
    html = response.content.decode()
    assert "Too many attempts" in html and 'class="auth-card"' in html
    seconds = int(response["Retry-After"])
    assert 1 <= seconds <= 60
    assert f"You can try again in {wait_words(seconds)}." in html
    assert "2/m" not in html
    assert log_in(Client(), "dora", address="10.0.0.9").status_code == 302


def test_it_limits_sign_ups(client, db, settings):
    settings.ACCOUNT_RATE_LIMITS = {"signup": "1/h/ip"}
    assert sign_up(client, "u1").status_code == 302
    client.post(reverse("account_logout"))
    response = sign_up(client, "u2")
    assert response.status_code == 429
    assert "You can try again in about 1 hour." in response.content.decode()
    assert not User.objects.filter(username="u2").exists()


def test_it_limits_password_resets(client, dora, settings):
    settings.ACCOUNT_RATE_LIMITS = {"reset_password": "10/h/ip,1/h/key"}
    url = reverse("account_reset_password")
    assert client.post(url, {"email": "dora@example.com"}).status_code == 302
    response = client.post(url, {"email": "dora@example.com"})
    assert response.status_code == 429 and int(response["Retry-After"]) > 3500
    assert len(mail.outbox) == 1


def test_it_sends_the_admin_login_through_the_site_login(client, staff, settings):
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "100/m/ip,3/m/key"}
    # The admin's own form takes no password: every attempt goes to the throttled login.
    response = client.post(reverse("admin:login"), {"username": "sam", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login") + "?next=")
    assert client.get(reverse("admin:index")).status_code == 302
    for i in range(3):
        log_in(client, "sam", f"guess-{i}")
    assert "Too many failed sign-ins" in log_in(client, "sam").content.decode()
    assert client.get(reverse("admin:index")).status_code == 302

    other = Client()
    response = other.post(
        reverse("account_login") + "?next=/admin/",
        {"login": "sam@example.com", "password": PASSWORD},
        REMOTE_ADDR="10.0.0.2",
    )
    assert response["Location"] == "/admin/"
    assert other.get("/admin/").status_code == 200


# Mail and single sign-on settings


def test_it_reads_the_mail_settings_from_one_url():
    assert email_url("smtp://bob%40example.com:p%3Ass@mail.example.com:587?tls=1") == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "mail.example.com",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "bob@example.com",
        "EMAIL_HOST_PASSWORD": "p:ss",
        "EMAIL_USE_SSL": False,
        "EMAIL_USE_TLS": True,
        "EMAIL_TIMEOUT": 20,
    }
    ssl = email_url("smtps://mail.example.com")
    assert (ssl["EMAIL_PORT"], ssl["EMAIL_USE_SSL"], ssl["EMAIL_USE_TLS"]) == (465, True, False)
    assert email_url("console:")["EMAIL_BACKEND"].endswith("console.EmailBackend")
    with pytest.raises(ValueError, match="unknown scheme"):
        email_url("mailto:someone@example.com")


def test_it_warns_at_deploy_when_mail_only_goes_to_the_console(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    ids = [m.id for m in checks.run_checks(include_deployment_checks=True)]
    assert "accounts.W001" in ids
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    ids = [m.id for m in checks.run_checks(include_deployment_checks=True)]
    assert "accounts.W001" not in ids


def test_it_offers_single_sign_on_when_configured(client, dora, settings):
    app = {"provider_id": "oidc", "name": "Team SSO", "client_id": "banana", "secret": "s"}
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {"APPS": [{**app, "settings": {"server_url": "http://127.0.0.1:9"}}]}
    }
    settings.OIDC_SERVER_URL = "http://127.0.0.1:9"
    for name in ["account_login", "account_signup"]:
        html = client.get(reverse(name)).content.decode()
        assert "Sign in with Team SSO" in html, name
    client.force_login(dora)
    assert "Single sign-on" in client.get(reverse("accounts:account")).content.decode()


def sso_sign_in(client: Client, provider) -> object:
    """Sign in at the loopback OpenID Connect provider and come back; the last response."""
    response = client.post(reverse("openid_connect_login", kwargs={"provider_id": "oidc"}))
    assert response.status_code == 302
    callback = provider.log_in(requests.Session(), response["Location"])
    path, _, query = callback.partition("?")
    return client.get(urlsplit(path).path + "?" + query)


@pytest.fixture
def sso(oidc_provider, settings):
    app = {
        "provider_id": "oidc",
        "name": "Team SSO",
        "client_id": oidc_provider.client_id,
        "secret": oidc_provider.client_secret,
        "settings": {"server_url": oidc_provider.server_url, "oauth_pkce_enabled": True},
    }
    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"APPS": [app]}}
    return oidc_provider


def test_it_signs_up_by_single_sign_on_as_the_registration_mode_allows(client, db, sso):
    set_registration("closed")
    response = sso_sign_in(client, sso)
    assert response.status_code == 403 and "Sign-up is closed" in response.content.decode()
    assert not User.objects.exists()

    set_registration("approval")
    response = sso_sign_in(Client(), sso)
    assert response["Location"] == reverse("accounts:waiting")
    user = User.objects.get()
    assert user.email == sso.email and Approval.status_of(user) == "pending"
    Approval.objects.update(status="approved")
    client = Client()
    assert sso_sign_in(client, sso)["Location"] == reverse("gallery:index")
    assert signed_in(client)
