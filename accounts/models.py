"""Who may make an account: the registration mode, invites, and approval of new accounts."""

from __future__ import annotations

import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone


class Registration(models.Model):
    """The site's one row about sign-up, changed by staff while the site runs.

    It is made from REGISTRATION_MODE and REGISTRATION_EMAIL_DOMAINS the first time it is read;
    from then on the database wins, so a restart never undoes what staff chose.
    """

    class Mode(models.TextChoices):
        OPEN = "open", "Open: anyone can sign up"
        INVITE = "invite", "Invite: only with an invite link from staff"
        APPROVAL = "approval", "Approval: anyone can sign up, staff approve each new account"
        CLOSED = "closed", "Closed: no new accounts"

    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.OPEN)
    email_domains = models.TextField(
        blank=True,
        help_text="Sign-up only with an email address at one of these domains, one per line or "
        "comma-separated (example.com). Empty: any address.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "registration setting"

    def __str__(self) -> str:
        return f"Registration: {self.mode}"

    @classmethod
    def get(cls) -> Registration:
        registration, _ = cls.objects.get_or_create(
            pk=1,
            defaults={
                "mode": settings.REGISTRATION_MODE,
                "email_domains": "\n".join(settings.REGISTRATION_EMAIL_DOMAINS),
            },
        )
        return registration

    @property
    def domains(self) -> list[str]:
        text = self.email_domains.replace(",", "\n")
        return [d.strip().lower().lstrip("@") for d in text.splitlines() if d.strip()]

    def allows_email(self, email: str) -> bool:
        domains = self.domains
        return not domains or email.rpartition("@")[2].lower() in domains


def new_invite_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits, like share links


class InviteQuerySet(models.QuerySet):
    def usable(self, now: datetime | None = None) -> InviteQuerySet:
        now = now or timezone.now()
        return self.filter(used_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class Invite(models.Model):
    """A single-use sign-up link made by staff, optionally for one email address only and
    optionally expiring."""

    token = models.CharField(max_length=64, unique=True, default=new_invite_token, editable=False)
    email = models.EmailField(
        blank=True, help_text="If given, only this address can sign up with the link."
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    objects = InviteQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Invite for {self.email}" if self.email else f"Invite {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("accounts:invite", args=[self.token])

    @property
    def is_used(self) -> bool:
        return self.used_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return not self.is_used and not self.is_expired

    def admits(self, email: str) -> bool:
        return not self.email or self.email.lower() == email.strip().lower()

    def use(self, user) -> bool:
        """Mark the invite used by `user`; False if it was used or expired meanwhile (two
        sign-ups racing with one link: exactly one wins)."""
        now = timezone.now()
        won = Invite.objects.usable(now).filter(pk=self.pk).update(used_at=now, used_by=user)
        if won:
            self.used_at, self.used_by = now, user
        return bool(won)


class ApprovalQuerySet(models.QuerySet):
    def pending(self) -> ApprovalQuerySet:
        return self.filter(status=Approval.Status.PENDING)

    def decided(self) -> ApprovalQuerySet:
        return self.exclude(status=Approval.Status.PENDING)


class Approval(models.Model):
    """Staff's decision on an account made in approval mode. Accounts without one (made in
    another mode, or before approval existed) and staff count as approved."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        REFUSED = "refused", "Refused"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="approval"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    objects = ApprovalQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.user} ({self.status})"

    @classmethod
    def status_of(cls, user) -> str:
        """Approved, pending or refused: what keeps `user` out of the site, if anything."""
        if user.is_staff or user.is_superuser:
            return cls.Status.APPROVED
        status = cls.objects.filter(user=user).values_list("status", flat=True).first()
        return status or cls.Status.APPROVED

    def decide(self, status: str, by) -> bool:
        """Approve or refuse a pending account; False if someone else decided first."""
        now = timezone.now()
        decided = Approval.objects.pending().filter(pk=self.pk)
        if not decided.update(status=status, decided_at=now, decided_by=by):
            return False
        self.status, self.decided_at, self.decided_by = status, now, by
        return True


class Preferences(models.Model):
    """A user's choices about their own files. Users without a row have the defaults."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences"
    )
    file_provenance = models.BooleanField(
        "Put the prompt and settings into downloaded files",
        default=True,
        help_text="Downloads and exports carry the prompt, settings, task id and date inside "
        "the file (PNG text, JPEG EXIF). Share links carry them only when they show the prompt.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "preferences"

    def __str__(self) -> str:
        return f"Preferences of {self.user}"

    @classmethod
    def of(cls, user) -> Preferences:
        """The user's preferences, unsaved defaults when they never changed any."""
        return cls.objects.filter(user=user).first() or cls(user=user)

    @classmethod
    def file_provenance_of(cls, user_id: int) -> bool:
        chosen = cls.objects.filter(user_id=user_id).values_list("file_provenance", flat=True)
        return next(iter(chosen), True)
