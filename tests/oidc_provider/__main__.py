"""Run the test OpenID Connect provider: `python -m tests.oidc_provider --db ... --url-file ...`.

It binds a free loopback port first, so that the issuer is known before Django starts, then
makes the tables of its SQLite database, creates the one user and the one confidential client
it is told about, writes its base URL to `--url-file` (the sign that it is ready) and serves
until SIGINT.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.oidc_provider")
    parser.add_argument("--db", required=True, help="SQLite file, made if missing")
    parser.add_argument("--url-file", required=True, type=Path)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--email", required=True)
    args = parser.parse_args()

    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    url = f"http://127.0.0.1:{server.server_port}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.oidc_provider.settings"
    os.environ["OIDC_PROVIDER_ISSUER"] = url + "/o"
    os.environ["OIDC_PROVIDER_DB"] = args.db

    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", run_syncdb=True, verbosity=0)
    _create_user_and_client(args)
    server.set_app(get_wsgi_application())
    partial = args.url_file.with_suffix(".partial")
    partial.write_text(url)
    partial.replace(args.url_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _create_user_and_client(args: argparse.Namespace) -> None:
    from django.contrib.auth.models import User
    from oauth2_provider.models import Application

    User.objects.create_user(
        args.username, email=args.email, password=args.password, first_name="Olga", last_name="Test"
    )
    Application.objects.create(
        name="Banana Gallery",
        client_id=args.client_id,
        client_secret=args.client_secret,  # hashed on save, as any client secret
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        algorithm=Application.RS256_ALGORITHM,
        # Redirect URIs on the test hosts need no registration (validators.py).
        redirect_uris="",
        # A first-party client: no consent page after signing in.
        skip_authorization=True,
    )


if __name__ == "__main__":
    main()
