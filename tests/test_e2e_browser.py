"""The main flows in a real browser against the whole stack, as `make run` starts it.

Real processes: `runserver` and a django-q2 `qcluster` on a SQLite file, and the provider
simulator over loopback HTTP; Debian's chromium driven by Playwright.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread
from tests.support import TEST_SETTINGS, chromium_path, require, running

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    simulator_url: str
    artifacts: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    require(
        chromium_path() is not None, "Debian's chromium is not installed (apt-get install chromium)"
    )
    tmp = tmp_path_factory.mktemp("stack")
    simulator = start_in_thread(SimulatorConfig(speed=0.12, seed=3))
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": TEST_SETTINGS,
        "DATABASE_URL": f"sqlite:///{tmp / 'e2e.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "AIGPTIMAGE_BASE_URL": simulator.base_url,
        "AIGPTIMAGE_API_KEY": DEFAULT_API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator.base_url.removeprefix("http://"),
        "AIGPTIMAGE_POLL_INTERVAL": "0.3",
        "AIGPTIMAGE_POLL_MAX_INTERVAL": "0.5",
        "Q_WORKERS": "3",
        "DEBUG": "0",
        "SITE_URL": f"http://127.0.0.1:{port}",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput"], env=env, check=True, capture_output=True)
    log = tmp / "stack.log"
    url = f"http://127.0.0.1:{port}"
    try:
        with running(
            [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
            [*manage, "qcluster"],
            env=env,
            log=log,
            ready=url + "/accounts/login/",
        ):
            yield Stack(url=url, simulator_url=simulator.base_url, artifacts=tmp)
    finally:
        simulator.shutdown()
        simulator.server_close()


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_up(page, stack: Stack, username: str) -> None:
    page.goto(stack.url + "/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", "a-long-pass-phrase")
    page.fill("#id_password2", "a-long-pass-phrase")
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/")


def test_it_signs_up_generates_and_shows_the_image_without_a_reload(stack, browser):
    context = browser.new_context()
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    sign_up(page, stack, "erin")
    assert page.get_by_text("Your gallery is empty").is_visible()

    page.evaluate("window.__sameDocument = true")
    page.fill("#id_prompt", "a lighthouse on a cliff at dawn, oil painting")
    page.select_option("#id_aspect_ratio", "16:9")
    page.click("button.button--generate")

    card = page.locator("article.card").first
    card.wait_for()
    assert card.get_attribute("data-status") != "done"
    assert card.locator(".card-state").inner_text()  # the state in words
    assert card.locator(".card-elapsed").inner_text().endswith("s")
    assert page.input_value("#id_prompt") == ""  # a fresh form for the next prompt
    page.screenshot(path=str(stack.artifacts / "pending.png"))

    card.locator("img").wait_for(timeout=30_000)
    assert card.get_attribute("data-status") == "done"
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert not page.get_by_text("Your gallery is empty").is_visible()
    page.screenshot(path=str(stack.artifacts / "done.png"))

    # The poller stops once nothing is pending.
    assert page.locator("#poller[hx-trigger]").count() == 0

    # Open the image: the card leads to its detail page, which shows the full image.
    card.locator("a.card-link").click()
    page.wait_for_url("**/generations/*/")
    full = page.locator(".detail-figure img")
    full.wait_for()
    # Waits are arrow functions: Playwright evals a bare expression on every poll after the
    # first, which the page's CSP (no 'unsafe-eval') refuses; a function is evaled only once.
    page.wait_for_function("() => document.querySelector('.detail-figure img').naturalWidth > 0")
    assert page.evaluate("document.querySelector('.detail-figure img').naturalWidth") == 1376
    assert "lighthouse on a cliff" in page.locator("#prompt-text").inner_text()
    page.screenshot(path=str(stack.artifacts / "detail.png"), full_page=True)
    # The Content-Security-Policy allows only our own scripts and styles: nothing broke it.
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
    response = page.goto(stack.url + full.get_attribute("src"))
    assert response.headers["content-type"] == "image/png"
    assert response.body()[:8] == b"\x89PNG\r\n\x1a\n"
    context.close()


def test_it_shows_the_reason_for_a_failure_and_retries(stack, browser):
    context = browser.new_context()
    page = context.new_page()
    sign_up(page, stack, "fred")
    page.fill("#id_prompt", "something the service refuses [sim:fail]")
    page.click("button.button--generate")
    card = page.locator("article.card").first
    card.locator(".card-reason").wait_for(timeout=30_000)
    assert card.get_attribute("data-status") == "failed"
    assert card.locator(".card-reason").inner_text()
    card.get_by_role("button", name="Retry").click()
    page.wait_for_function(
        "() => document.querySelector('article.card').dataset.status !== 'failed'",
        timeout=10_000,
    )
    context.close()


def test_it_shares_an_image_and_revokes_the_link(stack, browser):
    owner = browser.new_context()
    page = owner.new_page()
    sign_up(page, stack, "gina")
    page.fill("#id_prompt", "a paper boat on a rainy street")
    page.click("button.button--generate")
    page.locator("article.card img").wait_for(timeout=30_000)
    page.locator("article.card a.card-link").click()
    page.wait_for_url("**/generations/*/")

    page.check("input[name=show_prompt]")
    page.select_option("select[name=expires_in_hours]", "24")
    page.get_by_role("button", name="Create link").click()
    link_url = page.locator("input.link-url").first.input_value()
    assert link_url.startswith(stack.url + "/s/")
    assert "Expires in" in page.locator(".link-facts").first.inner_text()

    visitor = browser.new_context()  # logged out, no cookies
    public = visitor.new_page()
    response = public.goto(link_url)
    assert response.status == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    public.wait_for_function("() => document.querySelector('img.share-image').naturalWidth > 0")
    og_image = public.locator('meta[property="og:image"]').get_attribute("content")
    assert og_image == link_url + "image"
    assert public.locator('meta[name="twitter:card"]').get_attribute("content") == (
        "summary_large_image"
    )
    assert public.locator('meta[name="robots"]').get_attribute("content").startswith("noindex")
    assert "a paper boat on a rainy street" in public.locator(".share-prompt").inner_text()
    public.screenshot(path=str(stack.artifacts / "share.png"))
    assert visitor.request.get(og_image).headers["content-type"] == "image/png"

    page.goto(stack.url + "/shares/")
    assert page.locator("table.table tbody tr").count() == 1
    assert page.locator("table.table tbody tr td").nth(3).inner_text() == "1"  # one view
    page.get_by_role("button", name="Revoke").click()
    assert "Revoked" in page.locator("table.table").inner_text()

    fresh = browser.new_context()
    assert fresh.new_page().goto(link_url).status == 404
    assert fresh.request.get(og_image).status == 404
    assert public.reload().status == 404
    for context in (owner, visitor, fresh):
        context.close()
