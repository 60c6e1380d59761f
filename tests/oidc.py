"""The test side of the OpenID Connect provider in tests/oidc_provider/: start it, sign in at it.

The `oidc_provider` fixture (conftest.py) starts one provider per test session and hands the
tests an `OIDCProvider`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import requests

from tests.support import require, running

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OIDCProvider:
    """A running provider with one user and one confidential client (client_secret_basic or
    client_secret_post, PKCE with S256 required, RS256 ID tokens, no consent page).

    `server_url` is the issuer, which allauth's `server_url` takes: discovery is at
    `server_url + "/.well-known/openid-configuration"`. The client may call back on any http
    URL on 127.0.0.1 (any port), localhost or testserver; any other redirect URI is refused.
    """

    url: str
    client_id: str
    client_secret: str
    username: str
    password: str
    email: str

    @property
    def server_url(self) -> str:
        return self.url + "/o"

    @property
    def login_url(self) -> str:
        """The provider's sign-in page: a plain form with `#id_username` and `#id_password`."""
        return self.url + "/login/"

    def env(self, name: str = "Test SSO") -> dict[str, str]:
        """The site's single sign-on settings for this provider, for a process's environment."""
        return {
            "OIDC_SERVER_URL": self.server_url,
            "OIDC_CLIENT_ID": self.client_id,
            "OIDC_CLIENT_SECRET": self.client_secret,
            "OIDC_NAME": name,
        }

    def log_in(self, session: requests.Session, authorization_url: str) -> str:
        """Sign in as the test user for an authorization request; the URL it calls back on.

        `authorization_url` is the provider's authorize endpoint with the relying party's query,
        as the relying party redirects a browser there. The result carries `code` and `state`
        (or `error`, if the provider turned the request down after sign-in). A session that
        has signed in before goes straight through, as a browser would.
        """
        response = session.get(authorization_url, allow_redirects=False, timeout=10)
        location = urljoin(authorization_url, response.headers.get("Location", ""))
        if response.status_code == 302 and location.startswith(self.login_url):
            page = session.get(location, timeout=10)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert token, f"no sign-in form at {location}:\n{page.text[:500]}"
            response = session.post(
                location,
                data={
                    "csrfmiddlewaretoken": token[1],
                    "username": self.username,
                    "password": self.password,
                },
                allow_redirects=False,
                timeout=10,
            )
            assert response.status_code == 302, f"sign-in refused:\n{response.text[:500]}"
            back = urljoin(location, response.headers["Location"])
            response = session.get(back, allow_redirects=False, timeout=10)
        assert response.status_code == 302, (
            f"the provider answered the authorization request with {response.status_code}:\n"
            f"{response.text[:500]}"
        )
        return response.headers["Location"]


@contextmanager
def provider_running(tmp: Path) -> Iterator[OIDCProvider]:
    """Run the provider in a process of its own for the length of a `with` block."""
    require(
        all(importlib.util.find_spec(name) for name in ("oauth2_provider", "jwcrypto")),
        "django-oauth-toolkit or jwcrypto is not installed (pip install -e '.[dev]')",
    )
    url_file = tmp / "url"
    provider = {
        "client_id": "banana-gallery-" + secrets.token_hex(4),
        "client_secret": secrets.token_urlsafe(32),
        "username": "olga",
        "password": "olga-pass-phrase",
        "email": "olga@example.test",
    }
    command = [sys.executable, "-m", "tests.oidc_provider", "--db", str(tmp / "provider.sqlite3")]
    command += ["--url-file", str(url_file)]
    for option, value in provider.items():
        command.append(f"--{option.replace('_', '-')}={value}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with running(command, env=env, log=tmp / "provider.log", ready=url_file.exists, timeout=30):
        yield OIDCProvider(url=url_file.read_text(), **provider)
