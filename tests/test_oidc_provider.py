"""The test OpenID Connect provider is a real one: discovery, keys, and the whole
authorization code flow with PKCE over HTTP, as a relying party such as allauth goes through it.

These test the `oidc_provider` fixture, not the site.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

CALLBACK = "http://testserver/accounts/oidc/test-sso/login/callback/"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def discovery(provider) -> dict:
    response = requests.get(provider.server_url + "/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    return response.json()


def authorization_url(provider, challenge: str | None, redirect_uri: str = CALLBACK) -> str:
    query = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid profile email groups",  # what allauth asks for
        "state": "state-1",
        "nonce": "nonce-1",
    }
    if challenge is not None:
        query |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return discovery(provider)["authorization_endpoint"] + "?" + urlencode(query)


def code_from(callback_url: str, redirect_uri: str = CALLBACK) -> str:
    assert callback_url.startswith(redirect_uri + "?"), callback_url
    query = parse_qs(urlsplit(callback_url).query)
    assert query["state"] == ["state-1"]
    return query["code"][0]


def redeem(provider, code: str, verifier: str, redirect_uri: str = CALLBACK) -> requests.Response:
    return requests.post(
        discovery(provider)["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        auth=(provider.client_id, provider.client_secret),
        timeout=10,
    )


def test_it_publishes_its_discovery_document_and_an_rsa_signing_key(oidc_provider):
    config = discovery(oidc_provider)

    assert config["issuer"] == oidc_provider.server_url
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert config[endpoint].startswith(oidc_provider.server_url + "/")
    assert "code" in config["response_types_supported"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert "RS256" in config["id_token_signing_alg_values_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        config["token_endpoint_auth_methods_supported"]
    )
    assert {"openid", "profile", "email"} <= set(config["scopes_supported"])
    assert {"sub", "email", "email_verified", "preferred_username"} <= set(
        config["claims_supported"]
    )

    keys = requests.get(config["jwks_uri"], timeout=10).json()["keys"]
    assert [(key["kty"], key["alg"], key["use"]) for key in keys] == [("RSA", "RS256", "sig")]
    assert "d" not in keys[0]  # the public half only


def test_it_signs_in_through_the_authorization_code_flow_with_pkce(oidc_provider):
    from jwcrypto import jwk, jwt  # after the fixture, which skips where it is missing

    config = discovery(oidc_provider)
    verifier, challenge = pkce_pair()

    callback = oidc_provider.log_in(requests.Session(), authorization_url(oidc_provider, challenge))
    tokens = redeem(oidc_provider, code_from(callback), verifier)

    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["token_type"] == "Bearer"
    keys = jwk.JWKSet.from_json(requests.get(config["jwks_uri"], timeout=10).text)
    id_token = jwt.JWT(jwt=tokens.json()["id_token"], key=keys, algs=["RS256"])
    claims = json.loads(id_token.claims)
    assert claims["iss"] == oidc_provider.server_url
    assert claims["aud"] == oidc_provider.client_id
    assert claims["nonce"] == "nonce-1"
    assert claims["email"] == oidc_provider.email
    assert claims["email_verified"] is True
    assert claims["preferred_username"] == oidc_provider.username

    userinfo = requests.get(
        config["userinfo_endpoint"],
        headers={"Authorization": "Bearer " + tokens.json()["access_token"]},
        timeout=10,
    )
    assert userinfo.status_code == 200
    assert userinfo.json()["sub"] == claims["sub"]
    assert userinfo.json()["email"] == oidc_provider.email
    assert userinfo.json()["email_verified"] is True
    assert userinfo.json()["preferred_username"] == oidc_provider.username


def test_it_calls_back_on_a_live_server_port_and_redeems_a_code_only_with_its_verifier(
    oidc_provider,
):
    session = requests.Session()
    live_callback = "http://127.0.0.1:45678/accounts/oidc/test-sso/login/callback/"
    verifier, challenge = pkce_pair()
    callback = oidc_provider.log_in(
        session, authorization_url(oidc_provider, challenge, redirect_uri=live_callback)
    )
    code = code_from(callback, redirect_uri=live_callback)

    wrong = redeem(oidc_provider, code, pkce_pair()[0], redirect_uri=live_callback)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert redeem(oidc_provider, code, verifier, redirect_uri=live_callback).status_code == 200
    spent = redeem(oidc_provider, code, verifier, redirect_uri=live_callback)
    assert spent.status_code == 400  # a code is good for one token request

    # A signed-in session goes straight through; a redirect URI must match the code's.
    verifier, challenge = pkce_pair()
    code = code_from(oidc_provider.log_in(session, authorization_url(oidc_provider, challenge)))
    elsewhere = redeem(oidc_provider, code, verifier, redirect_uri=live_callback)
    assert elsewhere.status_code == 400


def test_it_refuses_a_request_without_pkce_or_with_a_foreign_redirect_uri(oidc_provider):
    session = requests.Session()
    oidc_provider.log_in(session, authorization_url(oidc_provider, pkce_pair()[1]))

    without_pkce = oidc_provider.log_in(session, authorization_url(oidc_provider, None))
    error = parse_qs(urlsplit(without_pkce).query)
    assert error["error"] == ["invalid_request"]
    assert error["error_description"] == ["Code challenge required."]

    foreign = session.get(
        authorization_url(
            oidc_provider, pkce_pair()[1], redirect_uri="https://evil.example/callback/"
        ),
        allow_redirects=False,
        timeout=10,
    )
    assert foreign.status_code == 400
    assert "evil.example" not in foreign.headers.get("Location", "")
