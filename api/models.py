"""Personal API tokens: a script's way in to the JSON API (api/api.py) as its user."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.crypto import salted_hmac

# A token is the prefix and 43 URL-safe characters (32 random bytes): `bnn_` says at a glance,
# and to secret scanners, what it is.
SCHEME = "bnn_"
# How much of a token its lists show: enough to tell tokens apart, far too little to guess it.
SHOWN = len(SCHEME) + 8
# `last_used_at` is written at most this often per token, not on every request.
LAST_USED_EVERY = timedelta(minutes=1)


def token_hash(secret: str, key: str | None = None) -> str:
    """HMAC-SHA256 of the secret, keyed with SECRET_KEY.

    A fast hash is enough, and PBKDF2 would be wrong here: the secret is 256 random bits, not
    a password a person chose, so there is nothing to guess even at billions of tries a second,
    while PBKDF2's deliberate half-second would be paid on every API request (and would let
    anyone with a stream of bad tokens keep the CPU busy). Unsalted, the hash is the lookup key
    in one indexed query; keyed, a copy of the database alone cannot even check a guess.
    """
    return salted_hmac("api.ApiToken", secret, secret=key, algorithm="sha256").hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def owned_by(self, user) -> ApiTokenQuerySet:
        return self.filter(user=user)

    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True)

    def with_secret(self, secret: str) -> ApiToken | None:
        """The token (revoked or not) whose secret this is. The hashes under SECRET_KEY_FALLBACKS
        count too, so that rotating SECRET_KEY as Django documents it keeps tokens working."""
        if not secret.startswith(SCHEME):
            return None
        keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
        hashes = [token_hash(secret, key) for key in keys]
        return self.select_related("user").filter(hash__in=hashes).first()


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=SHOWN)
    hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def create_for(cls, user, name: str) -> tuple[ApiToken, str]:
        """A new token and its secret, which is stored only as its hash: show it now or never."""
        secret = SCHEME + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=secret[:SHOWN], hash=token_hash(secret)
        )
        return token, secret

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
                revoked_at=self.revoked_at
            )

    def record_use(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= LAST_USED_EVERY:
            self.last_used_at = now
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
