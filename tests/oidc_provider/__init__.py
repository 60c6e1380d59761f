"""A real OpenID Connect provider for the tests, built on django-oauth-toolkit.

It is a Django project of its own (settings, urls, a login page), run as a separate process by
the `oidc_provider` fixture (`python -m tests.oidc_provider`, see `__main__.py`) so that the
site's sign-in through allauth's `openid_connect` provider is tested against real discovery,
real signed ID tokens and a real token endpoint over loopback HTTP. Nothing in the site imports
it, and it imports nothing from the site.
"""
