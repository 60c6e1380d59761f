"""The provider's claims, and which redirect URIs it accepts."""

from __future__ import annotations

from urllib.parse import urlsplit

from oauth2_provider.oauth2_validators import OAuth2Validator

# Hosts a test's relying party calls back on: loopback for a live server (any port), and the
# Django test client's `testserver`.
CALLBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "testserver"}


class ProviderValidator(OAuth2Validator):
    def get_additional_claims(self):
        # The request-agnostic form, so that discovery lists the claims too.
        return {
            "email": lambda request: request.user.email,
            "email_verified": lambda request: True,
            "preferred_username": lambda request: request.user.username,
            "name": lambda request: request.user.get_full_name(),
            "given_name": lambda request: request.user.first_name,
            "family_name": lambda request: request.user.last_name,
        }

    def validate_redirect_uri(self, client_id, redirect_uri, request, *args, **kwargs):
        """Any http callback on a test host, so a test needs no registration of its own.

        Anything else must be registered on the application, as on a real provider; the token
        endpoint still requires the very redirect URI the code was issued for.
        """
        parts = urlsplit(redirect_uri)
        if parts.scheme == "http" and parts.hostname in CALLBACK_HOSTS and not parts.fragment:
            return True
        return super().validate_redirect_uri(client_id, redirect_uri, request, *args, **kwargs)
