"""The main flows in a real browser against the whole stack, as `make run` starts it.

Real processes: `runserver` and a django-q2 `qcluster` on a SQLite file, and the provider
simulator over loopback HTTP; Debian's chromium driven by Playwright.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread
from tests.support import chromium_path, process_env, require, running

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
    env: dict

    def shell(self, code: str) -> str:
        """Run Python in `manage.py shell` against the stack's database; its output."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
            env=self.env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    require(
        chromium_path() is not None, "Debian's chromium is not installed (apt-get install chromium)"
    )
    tmp = tmp_path_factory.mktemp("stack")
    simulator = start_in_thread(SimulatorConfig(speed=0.12, seed=3))
    port = free_port()
    env = {
        **process_env(),
        "DATABASE_URL": f"sqlite:///{tmp / 'e2e.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "AIGPTIMAGE_BASE_URL": simulator.base_url,
        "AIGPTIMAGE_API_KEY": DEFAULT_API_KEY,
        "AIGPTIMAGE_RESULT_HOSTS_ALLOWED": simulator.base_url.removeprefix("http://"),
        "AIGPTIMAGE_POLL_INTERVAL": "0.3",
        "AIGPTIMAGE_POLL_MAX_INTERVAL": "0.5",
        "Q_WORKERS": "3",
        "AIGPTIMAGE_PAUSE_PROBE": "2",
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
            yield Stack(url=url, simulator_url=simulator.base_url, artifacts=tmp, env=env)
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
    page.fill("#id_email", f"{username}@example.com")
    page.fill("#id_password1", "a-long-pass-phrase")
    page.fill("#id_password2", "a-long-pass-phrase")
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/")


DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 375, "height": 812}


def open_page(browser, state=None, **options):
    """A fresh browser context (signed in if `state` is a storage state; `options` as
    browser.new_context takes them) and a page in it."""
    context = browser.new_context(storage_state=state, **options)
    return context, context.new_page()


def log_in(page, stack: Stack, username: str) -> None:
    """Sign in as `username` through the login form (the seeded users' password)."""
    page.goto(stack.url + "/accounts/login/")
    page.fill("#id_login", username)
    page.fill("#id_password", "a-long-pass-phrase")
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/")


def test_it_signs_up_generates_and_shows_the_image_without_a_reload(stack, browser):
    context, page = open_page(browser)
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    sign_up(page, stack, "erin")
    assert page.get_by_text("Your gallery is empty").is_visible()

    page.evaluate("window.__sameDocument = true")
    page.fill("#id_prompt", "a lighthouse on a cliff at dawn, oil painting")
    page.select_option("#id_aspect_ratio", "16:9")
    page.click("button.button--generate")

    card = page.locator("article.tile").first
    card.wait_for()
    assert card.get_attribute("data-status") != "done"
    assert card.locator(".tile-state").inner_text()  # the state in words
    assert card.locator(".tile-elapsed").inner_text().endswith("s")
    assert page.input_value("#id_prompt") == ""  # a fresh form for the next prompt
    page.screenshot(path=str(stack.artifacts / "pending.png"))

    card.locator("img").wait_for(timeout=30_000)
    assert card.get_attribute("data-status") == "done"
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert not page.get_by_text("Your gallery is empty").is_visible()
    page.screenshot(path=str(stack.artifacts / "done.png"))

    # The poller stops once nothing is pending.
    assert page.locator("#poller[hx-trigger]").count() == 0

    # The card's link is its detail page (the viewer opens over it with JavaScript; the
    # viewer has a test of its own), which shows the full image.
    page.goto(stack.url + card.locator("a.tile-link").get_attribute("href"))
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
    context, page = open_page(browser)
    sign_up(page, stack, "fred")
    page.fill("#id_prompt", "something the service refuses [sim:fail]")
    page.click("button.button--generate")
    card = page.locator("article.tile").first
    card.locator(".tile-reason").wait_for(timeout=30_000)
    assert card.get_attribute("data-status") == "failed"
    assert card.locator(".tile-reason").inner_text()
    card.get_by_role("button", name="Retry").click()
    page.wait_for_function(
        "() => document.querySelector('article.tile').dataset.status !== 'failed'",
        timeout=10_000,
    )
    context.close()


def test_it_shares_an_image_and_revokes_the_link(stack, browser):
    owner, page = open_page(browser)
    sign_up(page, stack, "gina")
    page.fill("#id_prompt", "a paper boat on a rainy street")
    page.click("button.button--generate")
    page.locator("article.tile img").wait_for(timeout=30_000)
    page.goto(stack.url + page.locator("article.tile a.tile-link").get_attribute("href"))

    page.check("input[name=show_prompt]")
    page.select_option("select[name=expires_in_hours]", "24")
    page.get_by_role("button", name="Create link").click()
    link_url = page.locator("input.link-url").first.input_value()
    assert link_url.startswith(stack.url + "/s/")
    assert "Expires in" in page.locator(".link-facts").first.inner_text()

    visitor, public = open_page(browser)  # logged out, no cookies
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

    fresh, stranger = open_page(browser)
    assert stranger.goto(link_url).status == 404
    assert "This link was revoked or has expired" in stranger.locator("main").inner_text()
    assert fresh.request.get(og_image).status == 404
    assert public.reload().status == 404
    for context in (owner, visitor, fresh):
        context.close()


def test_it_refuses_a_post_over_the_budget_and_sends_nothing(stack, browser):
    import time

    import requests

    context, page = open_page(browser)
    sign_up(page, stack, "olive")
    stack.shell(
        "from django.contrib.auth.models import User; from ledger.models import UserLimits; "
        "UserLimits.objects.create(user=User.objects.get(username='olive'), monthly_credits=1)"
    )
    page.fill("#id_prompt", "a single paper crane")
    page.click("button.button--generate")
    page.locator("article.tile img").wait_for(timeout=30_000)  # the budget's one credit

    # Once nothing is left to send anywhere on the stack, count what reached the simulator.
    def last_line(code: str) -> str:
        return stack.shell(code).strip().splitlines()[-1]  # after the shell's own words

    pending = "from gallery.models import Generation; print(Generation.objects.pending().count())"
    deadline = time.monotonic() + 30
    while last_line(pending) != "0":
        assert time.monotonic() < deadline, "the stack's earlier work did not finish"
        time.sleep(0.5)
    status = stack.simulator_url + "/_simulator/status"
    calls = requests.get(status, timeout=5).json()["createTask"]["calls"]

    page.fill("#id_prompt", "a second paper crane")
    page.click("button.button--generate")
    error = page.locator("#generate-form .errors")
    error.wait_for()
    assert error.inner_text().startswith(
        "This post needs 1 credit and you have none left this month; your budget renews on "
    )
    assert page.input_value("#id_prompt") == "a second paper crane"  # nothing lost
    assert page.locator("article.tile").count() == 1
    mine = "from gallery.models import Generation; "
    mine += "print(Generation.objects.filter(owner__username='olive').count())"
    assert last_line(mine) == "1"  # nothing queued, so nothing can be sent
    assert requests.get(status, timeout=5).json()["createTask"]["calls"] == calls
    context.close()


# The image-first gallery: every page whole, undistorted, accessible, in both themes and sizes.

AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
VIEWPORTS = [(1440, 900), (375, 812)]
SCHEMES = ["light", "dark"]
SEED = """
import json
from datetime import timedelta
from django.contrib.auth.models import User
from django.utils import timezone
from gallery.models import Collection, Generation, ShareLink
from tests.factories import image_size, make_entry, make_generation, make_image
import uuid
user = User.objects.create_user("uma", password="a-long-pass-phrase")
post = uuid.uuid4()  # one post of three variations, the oldest images (last in the grid)
variations = [make_generation(user, prompt="three pears", aspect_ratio="4:5", post=post)
              for _ in range(3)]
for generation in variations:
    make_image(generation, *image_size("4:5"))
made = []
for i, ratio in enumerate(["16:9", "1:1", "9:16", "21:9", "3:4", "8:1", "2:3", "4:3", "1:4"]):
    generation = make_generation(user, prompt=f"secret prompt {i} of uma", aspect_ratio=ratio,
                                 cost_time_ms=9000 + i * 700, is_favorite=i == 1)
    make_image(generation, *image_size(ratio))
    made.append(generation)
refused = make_generation(user, prompt="refused", status="failed",
                          fail_message="Refused, change it.")
link = ShareLink.objects.create(image=made[2].images.get(), show_prompt=False)
# What the images cost: one every third day back from today, and the refused one.
now = timezone.now()
for i, generation in enumerate(made):
    make_entry(user, now - timedelta(days=3 * i), credits=1 + i % 3, generation=generation)
make_entry(user, now, credits=2, outcome="failed", generation=refused, outcome_code="400",
           outcome_reason="Refused, change it.")
User.objects.create_user("stella", password="a-long-pass-phrase", is_staff=True)
trips = Collection.objects.create(owner=user, name="Long shapes", description="Wide and tall.")
trips.add(Generation.objects.filter(pk__in=[made[i].pk for i in (0, 3, 5, 8)]))
Collection.objects.create(owner=user, name="Still empty")
album = ShareLink.objects.create(collection=trips, show_prompt=True)
print(json.dumps({"detail": made[0].pk, "token": link.token,
                  "variations": [g.pk for g in variations],
                  "collection": trips.pk, "album": album.token}))
"""


@pytest.fixture(scope="module")
def gallery(stack, browser):
    """A user with images of many shapes and a share link; the browser's signed-in state."""
    import json

    seeded = json.loads(stack.shell(SEED).strip().splitlines()[-1])
    context, page = open_page(browser)
    log_in(page, stack, "uma")
    state = context.storage_state()
    context.close()
    return {**seeded, "state": state}


def watch_csp(page) -> list[str]:
    """Every Content-Security-Policy violation the page reports."""
    seen: list[str] = []
    page.on("console", lambda m: "Content Security Policy" in m.text and seen.append(m.text))
    return seen


def check_page(page) -> None:
    """No sideways scrolling, and every image drawn at its own aspect ratio (within 2 %)."""
    page.wait_for_load_state("networkidle")
    # Every image that is drawn (a folded variation is not, and lazy, never loads).
    page.wait_for_function(
        "() => [...document.images].filter(i => i.offsetParent).every(i => i.complete)",
        timeout=10_000,
    )
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow} px"
    distorted = page.evaluate(
        """() => [...document.images].filter(i => i.naturalWidth && i.offsetParent).map(i => {
            const box = i.getBoundingClientRect();
            const natural = i.naturalWidth / i.naturalHeight;
            const drawn = box.width / box.height;
            const fit = getComputedStyle(i).objectFit;
            const whole = fit === "contain" || fit === "scale-down";
            const ok = whole || Math.abs(drawn / natural - 1) <= 0.02;
            return {src: i.src, natural, drawn, fit, ok};
        }).filter(r => !r.ok)"""
    )
    assert not distorted, f"{page.url}: {distorted}"


def sized(viewport: tuple[int, int]) -> dict[str, int]:
    return dict(zip(("width", "height"), viewport, strict=True))


def axe_violations(browser, url: str, state, viewport, scheme, before=None) -> list[str]:
    """Critical and serious axe-core findings, in a context of its own that lets axe in."""
    context, page = open_page(
        browser, state, viewport=sized(viewport), color_scheme=scheme, bypass_csp=True
    )
    page.goto(url)
    page.wait_for_load_state("networkidle")
    if before:
        before(page)
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    context.close()
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results["violations"]
        if v["impact"] in ("critical", "serious")
    ]


def open_viewer(page) -> None:
    # Near the top: the tile's actions sit at its bottom.
    page.locator(".tile--done a.tile-link").first.click(position={"x": 8, "y": 8})
    page.locator(".pswp--open").wait_for()
    # Open once the opening fade is over: the viewer then holds the keyboard focus.
    page.wait_for_function("() => document.activeElement?.closest('.pswp') !== null")


def draw_pages(stack, browser, gallery, viewport, scheme, pages: dict[str, str]) -> None:
    """Each page whole (check_page), screenshotted, axe-clean and without a CSP violation."""
    context, page = open_page(
        browser, gallery["state"], viewport=sized(viewport), color_scheme=scheme
    )
    violations = watch_csp(page)
    problems = []
    for name, path in pages.items():
        page.goto(stack.url + path)
        before = open_viewer if name == "viewer" else None
        if before:
            page.wait_for_load_state("networkidle")
            before(page)
        check_page(page)
        page.screenshot(path=str(stack.artifacts / f"{name}-{viewport[0]}-{scheme}.png"))
        state = gallery["state"]
        found = axe_violations(browser, stack.url + path, state, viewport, scheme, before)
        problems += [f"{name}: {v}" for v in found]
    assert not problems, problems
    assert not violations, violations
    context.close()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("viewport", VIEWPORTS, ids=["desktop", "phone"])
def test_it_draws_every_page_whole_and_accessible(stack, browser, gallery, viewport, scheme):
    pages = {
        "gallery": "/",
        "viewer": "/",
        "detail": f"/generations/{gallery['detail']}/",
        "shares": "/shares/",
        "share": f"/s/{gallery['token']}/",
        "account": "/accounts/",
        "usage": "/usage/",
    }
    draw_pages(stack, browser, gallery, viewport, scheme, pages)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("viewport", VIEWPORTS, ids=["desktop", "phone"])
def test_it_draws_the_collection_pages_whole_and_accessible(
    stack, browser, gallery, viewport, scheme
):
    pages = {
        "collections": "/collections/",
        "collection": f"/collections/{gallery['collection']}/",
        "album": f"/s/{gallery['album']}/",
        "api-tokens": "/accounts/api-tokens/",
    }
    draw_pages(stack, browser, gallery, viewport, scheme, pages)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("viewport", VIEWPORTS, ids=["desktop", "phone"])
def test_it_draws_the_login_and_signup_pages_whole_and_accessible(stack, browser, viewport, scheme):
    context, page = open_page(browser, viewport=sized(viewport), color_scheme=scheme)
    violations = watch_csp(page)
    problems = []
    for name, path in {"login": "/accounts/login/", "signup": "/accounts/signup/"}.items():
        page.goto(stack.url + path)
        check_page(page)
        page.screenshot(path=str(stack.artifacts / f"{name}-{viewport[0]}-{scheme}.png"))
        found = axe_violations(browser, stack.url + path, None, viewport, scheme)
        problems += [f"{name}: {v}" for v in found]
    assert not problems, problems
    assert not violations, violations
    context.close()


def test_it_makes_an_api_token_that_a_script_uses_until_it_is_revoked(stack, browser, gallery):
    import requests

    context, page = open_page(browser, gallery["state"], viewport=DESKTOP)
    violations = watch_csp(page)
    page.goto(stack.url + "/accounts/")
    page.click("text=Manage API tokens")
    page.fill("input[name=name]", "e2e script")
    page.click("button:has-text('Make a token')")
    secret = page.input_value("#token-secret")
    assert secret.startswith("bnn_")

    headers = {"Authorization": f"Bearer {secret}"}
    listed = requests.get(stack.url + "/api/v1/generations", headers=headers, timeout=10)
    assert listed.status_code == 200
    assert gallery["detail"] in [g["id"] for g in listed.json()["generations"]]

    page.reload()
    assert secret not in page.content()  # shown that once only
    page.get_by_role("button", name="Revoke e2e script").click()
    page.wait_for_load_state()
    refused = requests.get(stack.url + "/api/v1/generations", headers=headers, timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_revoked"

    # The docs page: the vendored Swagger UI, drawn under the CSP.
    page.goto(stack.url + "/api/v1/docs")
    page.locator(".opblock").first.wait_for()
    assert not violations, violations
    context.close()


def at(page, url: str) -> None:
    """Wait for the address bar to show `url` (the viewer changes it without a navigation)."""
    page.wait_for_function(f"() => location.href === {url!r}", timeout=15_000)


def shows(page, selector: str, text: str) -> None:
    """Wait for the element to show `text` (htmx and the viewer update it a moment after)."""
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector)?.innerText.includes(text)",
        arg=[selector, text],
    )


def test_it_walks_the_viewer_with_the_keyboard(stack, browser, gallery):
    context, page = open_page(browser, gallery["state"], viewport=DESKTOP)
    violations = watch_csp(page)
    page.goto(stack.url + "/")
    page.wait_for_load_state("networkidle")
    links = page.locator(".tile--done a.tile-link")
    first, second = links.nth(0).get_attribute("href"), links.nth(1).get_attribute("href")
    open_viewer(page)
    assert page.url == stack.url + first  # a viewed image can be linked
    page.keyboard.press("ArrowRight")
    at(page, stack.url + second)
    page.keyboard.press("ArrowLeft")
    at(page, stack.url + first)

    star = page.locator(".tile--done").first.locator(".favorite button")
    was = star.get_attribute("aria-pressed")
    page.keyboard.press("f")
    star_state = "document.querySelector('.tile--done .favorite button').ariaPressed"
    page.wait_for_function(f"() => {star_state} !== '{was}'")
    viewer_star = page.locator(".pswp__button--favorite")
    expected = "★" if was == "false" else "☆"
    page.wait_for_function(
        f"() => document.querySelector('.pswp__button--favorite').textContent === '{expected}'"
    )
    assert viewer_star.get_attribute("aria-pressed") == ("true" if was == "false" else "false")

    page.keyboard.press("i")
    assert "secret prompt" in page.locator(".pswp__info").inner_text()
    page.keyboard.press("Escape")
    page.locator(".pswp--open").wait_for(state="detached")
    at(page, stack.url + "/")
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    assert not violations, violations
    context.close()


def test_it_shows_a_pause_and_its_end_without_a_reload(stack, browser):
    context, page = open_page(browser, viewport=DESKTOP)
    sign_up(page, stack, "paula")
    page.evaluate("window.__sameDocument = true")
    page.fill("#id_prompt", "out of credits for a moment [sim:402=3]")
    page.click("button.button--generate")
    banner = page.locator("#pause-banner .banner")
    banner.wait_for(timeout=20_000)
    assert "credit" in banner.inner_text().lower()
    page.locator("article.tile .tile-placeholder--paused").wait_for(timeout=10_000)
    assert "Paused" in page.locator("article.tile .tile-state").first.inner_text()
    # The key works again: the banner goes, the image comes, and the page never reloaded.
    page.locator("article.tile img").wait_for(timeout=60_000)
    banner.wait_for(state="detached", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    context.close()


def test_it_shows_a_posts_variations_as_one_group(stack, browser, gallery):
    context, page = open_page(browser, gallery["state"], viewport=DESKTOP)
    violations = watch_csp(page)
    page.goto(stack.url + "/")
    page.wait_for_load_state("networkidle")
    members = page.locator(".tile[data-post]")
    assert members.count() == 3
    visible = page.locator(".tile[data-post]:visible")
    assert visible.count() == 1  # one tile for the post, the newest variation
    fold = page.locator(".tile-post")
    assert fold.text_content() == "+2 more: show all 3 variations"  # "+2" shows

    # The viewer walks through every variation, folded or not.
    newest, middle, oldest = (f"/generations/{pk}/" for pk in reversed(gallery["variations"]))
    visible.locator("a.tile-link").click(position={"x": 60, "y": 60})
    page.locator(".pswp--open").wait_for()
    at(page, stack.url + newest)
    page.wait_for_function("() => document.activeElement?.closest('.pswp') !== null")
    page.keyboard.press("ArrowRight")
    at(page, stack.url + middle)
    page.keyboard.press("ArrowRight")
    at(page, stack.url + oldest)
    page.keyboard.press("Escape")
    page.locator(".pswp--open").wait_for(state="detached")

    fold.click()
    page.wait_for_function(
        "() => document.querySelectorAll('.tile[data-post]:not(.tile--folded)').length === 3"
    )
    assert visible.count() == 3
    check_page(page)  # unfolded, the rows still keep every shape
    assert fold.get_attribute("aria-expanded") == "true"
    fold.click()
    page.wait_for_function("() => document.querySelectorAll('.tile--folded').length === 2")

    # Select mode shows each variation, so that each can be picked.
    page.keyboard.press("s")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tile[data-post]')].every(t => t.offsetParent)"
    )
    page.keyboard.press("Escape")

    page.goto(stack.url + middle)
    assert page.locator(".variations li").count() == 3
    assert page.locator('.variations [aria-current="page"]').get_attribute("href") == middle
    check_page(page)
    found = axe_violations(browser, stack.url + middle, gallery["state"], (1440, 900), "light")
    assert not found, found
    assert not violations, violations
    context.close()


@pytest.mark.parametrize("width", [375, 700, 730, 761, 1024])
def test_it_keeps_the_settings_and_the_filters_in_reach_at_every_width(
    stack, browser, gallery, width
):
    """Where the composer's settings and the filters fold, their summary shows to unfold them."""
    context, page = open_page(browser, gallery["state"], viewport={"width": width, "height": 800})
    page.goto(stack.url + "/")
    for field in ("#id_aspect_ratio", "#filter_status"):
        control = page.locator(field)
        if not control.is_visible():
            page.locator(f"details:has({field}) > summary").click()
        control.wait_for(state="visible", timeout=5000)
    context.close()


def test_it_switches_the_theme_and_remembers_it(stack, browser, gallery):
    context, page = open_page(browser, gallery["state"], color_scheme="dark")
    background = "() => getComputedStyle(document.body).backgroundColor"
    page.goto(stack.url + "/")
    assert page.evaluate(background) == "rgb(17, 17, 16)"  # the system's dark
    toggle = page.locator("[data-theme-toggle]:visible")
    assert toggle.inner_text() == "Light theme"
    toggle.click()
    assert page.evaluate(background) == "rgb(246, 244, 238)"
    page.reload()
    assert page.evaluate(background) == "rgb(246, 244, 238)"  # remembered in this browser
    assert page.locator("[data-theme-toggle]:visible").get_attribute("aria-pressed") == "false"
    context.close()


def test_it_shows_the_usage_chart_and_the_dashboard_to_staff_only(stack, browser, gallery):
    context, page = open_page(browser, gallery["state"], viewport=DESKTOP)
    violations = watch_csp(page)
    page.goto(stack.url + "/")
    page.get_by_role("link", name="Usage", exact=True).click()
    page.wait_for_url(stack.url + "/usage/")
    chart = page.locator("svg[data-chart][role=img]")
    assert chart.locator("rect.chart-bar").count() == 30  # one bar a day
    drawn = "() => [...document.querySelectorAll('rect.chart-bar')].map(r => r.getBBox().height)"
    heights = page.evaluate(drawn)
    assert sum(h > 0 for h in heights) == 9  # the seeded days, one every third day
    assert max(heights) == 100  # the day with the most fills the chart
    assert chart.bounding_box()["width"] > 1000  # stretched to the page's width
    assert "Refused, change it." in page.locator("main").inner_text()
    assert page.get_by_role("link", name="Site usage").count() == 0
    assert page.goto(stack.url + "/staff/usage/").status == 404
    assert (
        page.goto(stack.url + "/staff/usage/ledger.csv?start=2026-01-01&end=2026-01-31").status
        == 404
    )

    staff, page = open_page(browser, viewport=PHONE)
    staff_violations = watch_csp(page)
    log_in(page, stack, "stella")
    assert page.goto(stack.url + "/staff/usage/").status == 200
    main = page.locator("main").inner_text()
    assert "Site usage" in main and "uma" in main and "of 5 active tasks allowed" in main
    assert page.locator("svg[data-chart] rect.chart-bar").count() >= 28  # the month's days
    check_page(page)
    state = staff.storage_state()
    for viewport in VIEWPORTS:
        found = axe_violations(browser, stack.url + "/staff/usage/", state, viewport, "dark")
        assert not found, found
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert download.value.suggested_filename.startswith("ledger-")
    assert "uma" in Path(download.value.path()).read_text()
    assert not violations + staff_violations, violations + staff_violations
    context.close()
    staff.close()


def test_it_downloads_with_provenance_and_exports_a_selection(stack, browser, gallery):
    """The detail page's download carries the prompt inside the file, unless the owner turns
    that off on the Account page; select mode's "Download zip" gives the selected images and
    their manifest."""
    import io
    import json
    import zipfile

    from PIL import Image as PILImage

    context, page = open_page(browser, gallery["state"], viewport=DESKTOP)
    violations = watch_csp(page)

    def downloaded(click) -> bytes:
        with page.expect_download() as download:
            click()
        return Path(download.value.path()).read_bytes()

    page.goto(f"{stack.url}/generations/{gallery['detail']}/")
    data = downloaded(lambda: page.get_by_role("link", name="Download", exact=True).click())
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.text["Description"] == "secret prompt 0 of uma"

    page.goto(stack.url + "/accounts/")
    page.get_by_label("Put the prompt and settings into downloaded files").uncheck()
    page.get_by_role("button", name="Save").click()
    assert "nothing added" in page.locator(".messages").inner_text()
    page.goto(f"{stack.url}/generations/{gallery['detail']}/")
    data = downloaded(lambda: page.get_by_role("link", name="Download", exact=True).click())
    with PILImage.open(io.BytesIO(data)) as picture:
        assert "Description" not in picture.text

    page.goto(stack.url + "/accounts/")
    page.get_by_label("Put the prompt and settings into downloaded files").check()
    page.get_by_role("button", name="Save").click()
    page.goto(stack.url + "/")
    page.keyboard.press("s")
    page.locator(".tile--done .tile-select input").nth(0).check()
    page.locator(".tile--done .tile-select input").nth(1).check()
    assert page.locator("#bulk-count").inner_text() == "2 selected"
    page.locator("#bulk-form .bulk-menu > summary").click()  # the rarer actions' menu
    data = downloaded(lambda: page.get_by_role("button", name="Download zip").click())
    archive = zipfile.ZipFile(io.BytesIO(data))
    about = json.loads(archive.read("manifest.json"))
    assert about["count"] == 2
    for entry in about["images"]:
        assert entry["file"] in archive.namelist()
        with PILImage.open(io.BytesIO(archive.read(entry["file"]))) as picture:
            assert picture.text["Description"] == entry["prompt"]
    assert page.locator("#bulk-count").inner_text() == "2 selected"  # still on the page
    assert not violations, violations
    context.close()


# The double-charge guard, and the notice when an image is done


def wait_until_idle(stack: Stack, timeout: float = 60) -> None:
    """Until nothing is pending anywhere on the stack: then the simulator's count of createTask
    calls says what this test's posts sent."""
    import time

    code = "from gallery.models import Generation; print(Generation.objects.pending().count())"
    deadline = time.monotonic() + timeout
    while stack.shell(code).strip().splitlines()[-1] != "0":
        assert time.monotonic() < deadline, "the stack's work did not finish"
        time.sleep(0.5)


def create_task_calls(stack: Stack) -> int:
    import requests

    status = requests.get(stack.simulator_url + "/_simulator/status", timeout=5).json()
    return status["createTask"]["calls"]


def generations_of(stack: Stack, username: str) -> int:
    code = "from gallery.models import Generation; "
    code += f"print(Generation.objects.filter(owner__username={username!r}).count())"
    return int(stack.shell(code).strip().splitlines()[-1])


def test_it_makes_one_post_of_a_double_click_and_says_when_an_image_was_made_already(
    stack, browser
):
    context, page = open_page(browser, viewport=DESKTOP)
    violations = watch_csp(page)
    sign_up(page, stack, "hana")
    wait_until_idle(stack)
    calls = create_task_calls(stack)
    posts: list[str] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and "/generations/new/" in r.url and posts.append(r.url),
    )

    page.fill("#id_prompt", "a teapot of blue glass on a windowsill")
    # The form as it is sent, to send it again later as a replay would.
    page.evaluate(
        "() => { window.__sent = new FormData(document.querySelector('#generate-form')) }"
    )
    page.dblclick("button.button--generate")
    card = page.locator("article.tile")
    card.locator("img").wait_for(timeout=30_000)
    assert card.count() == 1 and len(posts) == 1
    assert generations_of(stack, "hana") == 1

    # The same form sent again (a replay, or a double click that htmx did not hold back) makes
    # nothing either: the server answers as it did the first time.
    replay = """async () => (await fetch('/generations/new/',
        {method: 'POST', body: window.__sent, redirect: 'manual'})).type"""
    assert page.evaluate(replay) == "opaqueredirect"
    wait_until_idle(stack)
    assert generations_of(stack, "hana") == 1
    assert create_task_calls(stack) == calls + 1

    # The same prompt (spaces and case aside) and settings: the image made already, first.
    page.fill("#id_prompt", "A teapot of  blue glass on a WINDOWSILL")
    page.click("button.button--generate")
    notice = page.locator("#generate-form .already")
    notice.wait_for()
    assert "You already have this image" in notice.inner_text()
    page.wait_for_function("() => document.querySelector('.already img').naturalWidth > 0")
    detail = card.locator("a.tile-link").get_attribute("href")
    assert notice.get_by_role("link", name="Open it").get_attribute("href") == detail
    assert page.input_value("#id_prompt") == "A teapot of  blue glass on a WINDOWSILL"
    assert generations_of(stack, "hana") == 1
    for (width, height), scheme in [(v, s) for v in VIEWPORTS for s in SCHEMES]:
        page.set_viewport_size({"width": width, "height": height})
        page.emulate_media(color_scheme=scheme)
        check_page(page)
        page.screenshot(path=str(stack.artifacts / f"already-made-{width}-{scheme}.png"))

    notice.get_by_role("button", name="Generate again anyway").click()
    page.wait_for_function("() => document.querySelectorAll('article.tile').length === 2")
    assert page.locator("#generate-form .already").count() == 0
    assert page.input_value("#id_prompt") == ""
    assert generations_of(stack, "hana") == 2
    assert len(posts) == 4  # the double click's one, the replay, the notice, "again"
    assert not violations, violations
    context.close()


COLLECTOR = """
from django.contrib.auth.models import User
from tests.factories import image_size, make_generation, make_image
user = User.objects.create_user("vera", password="a-long-pass-phrase")
for i, ratio in enumerate(["3:2", "1:1", "2:3", "16:9"]):
    generation = make_generation(user, prompt=f"holiday snap {i}", aspect_ratio=ratio)
    make_image(generation, *image_size(ratio))
"""


def test_it_collects_images_and_shares_them_as_an_album(stack, browser):
    stack.shell(COLLECTOR)
    owner, page = open_page(browser, viewport=DESKTOP)
    violations = watch_csp(page)
    log_in(page, stack, "vera")
    page.wait_for_load_state("networkidle")
    page.evaluate("window.__sameDocument = true")
    tiles = page.locator(".tile--done")
    prompts = [tiles.nth(i).locator("img").get_attribute("alt") for i in range(4)]

    # The select bar: two images into a new collection, named inline, without a reload.
    page.get_by_role("button", name="Select", exact=True).click()
    tiles.nth(1).click()
    tiles.nth(2).click()
    assert page.locator("#bulk-count").inner_text() == "2 selected"
    page.fill("#collect-new", "Holiday")
    page.get_by_role("button", name="Add to collection").click()
    status = page.locator("#bulk-status")
    status.filter(has_text="Added 2 images to “Holiday”.").wait_for()
    assert page.locator("#collect-collection option:checked").inner_text() == "Holiday"
    assert page.input_value("#collect-new") == ""
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=str(stack.artifacts / "collect-bar.png"))
    page.keyboard.press("Escape")

    # The viewer: the first image into the same collection from its panel.
    open_viewer(page)
    page.keyboard.press("c")
    panel = page.locator(".pswp__collections")
    choice = panel.get_by_role("button", name="Holiday")
    choice.wait_for()
    assert choice.get_attribute("aria-pressed") == "false"
    choice.click()
    panel.get_by_text("In “Holiday”.").wait_for()
    assert panel.get_by_role("button", name="Holiday").get_attribute("aria-pressed") == "true"
    page.screenshot(path=str(stack.artifacts / "collect-viewer.png"))
    page.keyboard.press("Escape")
    page.locator(".pswp--open").wait_for(state="detached")

    page.goto(stack.url + "/collections/")
    card = page.locator(".collection-card", has_text="Holiday")
    assert "3 images" in card.inner_text()
    card.click()
    assert page.locator(".tile--done").count() == 3
    assert page.locator("h1").inner_text() == "Holiday"

    # Share the collection as an album link.
    page.get_by_text("Share as an album").click()
    page.check("#share input[name=show_prompt]")
    page.get_by_role("button", name="Create album link").click()
    album_url = page.locator("input.link-url").first.input_value()
    assert album_url.startswith(stack.url + "/s/")

    visitor, public = open_page(browser, viewport=PHONE)  # logged out
    public_violations = watch_csp(public)
    response = public.goto(album_url)
    assert response.status == 200
    assert response.headers["referrer-policy"] == "no-referrer"
    assert public.locator("h1").inner_text() == "Holiday"
    assert public.locator(".tile").count() == 3
    check_page(public)
    shown = [public.locator(".tile img").nth(i).get_attribute("alt") for i in range(3)]
    assert sorted(shown) == sorted(prompts[:3])
    assert public.locator("form, .tile-select, .favorite").count() == 0  # nothing of the owner's
    # The link allows downloads (the default): each image offers its original, on its tile.
    assert public.get_by_role("link", name="Download original").count() == 3
    public.locator("a.tile-link").first.click(position={"x": 8, "y": 8})
    public.locator(".pswp--open").wait_for()
    public.wait_for_function(
        "() => [...document.querySelectorAll('.pswp__img')].some(i => i.naturalWidth > 0)"
    )
    assert public.locator(".pswp__button--favorite, .pswp__button--collections").count() == 0
    assert public.url == album_url  # no owner's page in the address bar
    public.screenshot(path=str(stack.artifacts / "album-viewer-375.png"))
    # And in the viewer: the original file, as an attachment.
    download = public.locator(".pswp__button--download")
    assert download.is_visible() and download.get_attribute("aria-label") == "Download original (d)"
    original = public.evaluate("() => document.querySelector('.pswp__button--download').href")
    assert original.startswith(album_url + "images/") and original.endswith("?download=1")
    served = visitor.request.get(original)
    assert served.headers["content-type"] == "image/png"
    assert served.headers["content-disposition"].startswith("attachment")
    public.keyboard.press("Escape")

    # Taken out of the collection, an image leaves the album at once.
    page.get_by_role("button", name="Select", exact=True).click()
    page.locator(".tile--done").first.click()
    page.locator("#bulk-form .bulk-menu > summary").click()
    page.get_by_role("button", name="Remove from this collection").click()
    status.filter(has_text="Took 1 image out of “Holiday”").wait_for()
    assert page.locator(".tile--done").count() == 2
    assert "2 in all" in page.locator("#counts").inner_text()
    public.reload()
    assert public.locator(".tile").count() == 2
    assert not violations + public_violations, violations + public_violations
    owner.close()
    visitor.close()


MARKET = """
from django.contrib.auth.models import User
from gallery.models import Collection, Generation
from tests.factories import image_size, make_generation, make_image
user = User.objects.create_user("xena", password="a-long-pass-phrase")
for i, ratio in enumerate(["3:2", "1:1", "2:3"]):
    generation = make_generation(user, prompt=f"a market stall {i}", aspect_ratio=ratio)
    make_image(generation, *image_size(ratio))
market = Collection.objects.create(owner=user, name="Market")
market.add(Generation.objects.filter(owner=user))
Collection.objects.create(owner=user, name="Elsewhere")
print(market.pk)
"""

# How many rows the select bar's controls take: their vertical middles, within 12 px.
BAR_ROWS = """() => {
  const controls = document.querySelectorAll(
    '#bulk-form :is(#bulk-count, button, summary, select, input:not([type=hidden]))');
  const middles = [...controls].filter(e => e.checkVisibility())
    .map(e => { const r = e.getBoundingClientRect(); return r.top + r.height / 2; })
    .sort((a, b) => a - b);
  return middles.filter((m, i) => i === 0 || m - middles[i - 1] > 12).length;
}"""


def test_it_takes_an_image_out_of_a_collection_in_the_viewer_and_off_its_page(stack, browser):
    collection = stack.url + f"/collections/{stack.shell(MARKET).strip().splitlines()[-1]}/"
    context, page = open_page(browser, viewport=DESKTOP)
    violations = watch_csp(page)
    log_in(page, stack, "xena")
    page.goto(collection)
    page.wait_for_load_state("networkidle")
    page.evaluate("window.__sameDocument = true")
    links = page.locator(".tile--done a.tile-link")
    first, second, third = (links.nth(i).get_attribute("href") for i in range(3))
    assert "3 in all" in page.locator("#counts").inner_text()

    # The select bar offers no adding to the collection it is on, but taking out of it; one
    # row on a wide screen, two on a phone, in either theme.
    page.get_by_role("button", name="Select", exact=True).click()
    page.locator(".tile--done").first.click()
    options = page.locator("#collect-collection option").all_inner_texts()
    assert options == ["Choose a collection", "Elsewhere"]
    remove = page.get_by_role("button", name="Remove from this collection")
    for scheme in SCHEMES:
        page.emulate_media(color_scheme=scheme)
        for viewport, rows in ((DESKTOP, 1), (PHONE, 2)):
            page.set_viewport_size(viewport)
            page.wait_for_function(f"() => ({BAR_ROWS})() === {rows}")
            check_page(page)
            width = viewport["width"]
            page.screenshot(path=str(stack.artifacts / f"select-bar-{width}-{scheme}.png"))
            page.locator("#bulk-form .bulk-menu > summary").click()
            remove.wait_for()
            page.screenshot(path=str(stack.artifacts / f"select-bar-more-{width}-{scheme}.png"))
            page.keyboard.press("Escape")  # closes the menu, and only the menu
            remove.wait_for(state="hidden")
            assert page.locator(".gallery.selecting").count() == 1
        # On a phone the collections fold under "Add to…".
        assert page.locator("#collect-collection").is_hidden()
        page.get_by_text("Add to…").click()
        page.locator("#collect-collection").wait_for()
        page.screenshot(path=str(stack.artifacts / f"select-bar-add-{width}-{scheme}.png"))
        page.locator("#counts").click()  # a click elsewhere closes it
        page.locator("#collect-collection").wait_for(state="hidden")
    page.set_viewport_size(DESKTOP)
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('.gallery.selecting')")

    # In the viewer's panel, out of this collection: its tile leaves the grid at once, the
    # counters follow, and the viewer moves on to the next image.
    def take_out(href: str) -> None:
        panel = page.locator(".pswp__collections")
        picker = panel.locator(f"#picker-{href.strip('/').split('/')[-1]}")
        choice = picker.get_by_role("button", name="Market")
        choice.wait_for()
        assert choice.get_attribute("aria-pressed") == "true"
        choice.click()

    open_viewer(page)
    at(page, stack.url + first)
    page.keyboard.press("c")
    take_out(first)
    page.wait_for_function("() => document.querySelectorAll('.tile--done').length === 2")
    shows(page, "#counts", "2 in all")
    at(page, stack.url + second)
    shows(page, ".pswp__counter", "1 / 2")
    # The last one: the viewer goes back to the one before it.
    page.keyboard.press("ArrowRight")
    at(page, stack.url + third)
    take_out(third)
    page.wait_for_function("() => document.querySelectorAll('.tile--done').length === 1")
    at(page, stack.url + second)
    shows(page, ".pswp__counter", "1 / 1")
    # None left: it closes.
    take_out(second)
    page.locator(".pswp--open").wait_for(state="detached")
    at(page, collection)
    page.wait_for_function("() => document.querySelectorAll('.tile').length === 0")
    shows(page, "#counts", "0 in all")
    assert page.evaluate("window.__sameDocument") is True
    page.reload()
    assert page.get_by_text("This collection is empty").is_visible()
    assert not violations, violations
    context.close()


# Notifications recorded as they are made, and a tab that the test can hide.
NOTIFICATIONS = """
window.__notices = [];
window.__asked = 0;
const Real = window.Notification;
class Recorded extends Real {
  constructor(title, options) {
    super(title, options);
    window.__notices.push(this);
  }
  static requestPermission() {
    window.__asked += 1;
    return Real.requestPermission();
  }
}
window.Notification = Recorded;
window.__hidden = false;
Object.defineProperty(Document.prototype, "hidden", { get: () => window.__hidden });
"""


def test_it_counts_what_is_on_its_way_in_the_title_and_notifies_when_it_is_done(stack, browser):
    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(NOTIFICATIONS)
    context.grant_permissions(["notifications"], origin=stack.url)
    page = context.new_page()
    violations = watch_csp(page)
    sign_up(page, stack, "iris")
    assert page.title() == "Your gallery · Banana Gallery"

    toggle = page.locator("[data-notify-toggle]")
    assert toggle.inner_text() == "Notify me"
    assert page.evaluate("window.__asked") == 0  # never asked before the click
    toggle.click()
    page.wait_for_function(
        "() => document.querySelector('[data-notify-toggle]').ariaPressed === 'true'"
    )
    assert toggle.inner_text() == "Notifications on"
    assert page.evaluate("window.__asked") == 1
    page.reload()
    assert toggle.inner_text() == "Notifications on"  # remembered in this browser

    page.fill("#id_prompt", "a slow render of a harbour at night")
    page.click("button.button--generate")
    page.wait_for_function("() => document.title === '(1) Your gallery · Banana Gallery'")
    page.evaluate("window.__hidden = true")
    page.wait_for_function(
        "() => document.title === '✓ Done — a slow render of a harbour at night'", timeout=30_000
    )
    page.wait_for_function("() => window.__notices.length === 1")
    notice = page.evaluate("() => ({title: __notices[0].title, body: __notices[0].body})")
    assert notice == {"title": "Your image is done", "body": "a slow render of a harbour at night"}

    # Back in view, the title settles on the count (none on their way now).
    page.evaluate("window.__hidden = false")
    page.wait_for_function(
        "() => document.title === 'Your gallery · Banana Gallery'", timeout=10_000
    )
    # A click on the notification opens the image.
    page.evaluate("() => __notices[0].dispatchEvent(new Event('click'))")
    page.locator(".pswp--open").wait_for()
    page.wait_for_function("() => document.activeElement?.closest('.pswp') !== null")
    page.keyboard.press("Escape")
    page.locator(".pswp--open").wait_for(state="detached")

    # In view, nothing is notified: the title says it.
    page.fill("#id_prompt", "a second harbour, in fog [sim:fail]")
    page.click("button.button--generate")
    page.wait_for_function(
        "() => document.title.startsWith('✕ Failed — a second harbour')", timeout=30_000
    )
    assert page.evaluate("window.__notices.length") == 1
    assert not violations, violations
    context.close()


SHARER = """
from django.contrib.auth.models import User
from tests.factories import image_size, make_generation, make_image
user = User.objects.create_user("wren", password="a-long-pass-phrase")
generation = make_generation(user, prompt="a kite over the dunes", aspect_ratio="3:2")
make_image(generation, *image_size("3:2"))
from gallery.models import Collection, Generation, ShareLink
kites = Collection.objects.create(owner=user, name="Kites")
kites.add(Generation.objects.filter(pk=generation.pk))
album = ShareLink.objects.create(collection=kites, allow_download=False)
print(generation.pk, album.token)
"""


def test_it_shares_with_a_password_a_maximum_of_views_and_no_download(stack, browser):
    pk, album = stack.shell(SHARER).strip().splitlines()[-1].split()
    detail = stack.url + f"/generations/{pk}/"
    owner, page = open_page(browser, viewport=DESKTOP)
    violations = watch_csp(page)
    log_in(page, stack, "wren")

    def create_link(**options: str) -> str:
        page.goto(detail)
        form = page.locator("#share form.share-form")
        form.locator("details.share-more > summary").click()
        for name, value in options.items():
            if value == "on":
                form.locator(f"input[name={name}]").check()
            else:
                form.locator(f"input[name={name}]").fill(value)
        form.get_by_role("button", name="Create link").click()
        return page.locator("#share input.link-url").first.input_value()

    # A password: asked for, a wrong one refused, the right one opens the image.
    locked_url = create_link(password="kite-season", note="for the club")
    assert "for the club" in page.locator("#share .link-facts").first.inner_text()
    visitor, public = open_page(browser)
    public_violations = watch_csp(public)
    assert public.goto(locked_url).status == 200
    assert public.locator("h1").inner_text() == "This image is protected by a password"
    assert public.locator("img.share-image").count() == 0
    assert visitor.request.get(locked_url + "image").status == 404
    public.fill("input[name=password]", "kite season")
    public.get_by_role("button", name="Open the image").click()
    assert "That password is not right" in public.locator(".auth-card").inner_text()
    assert public.locator("img.share-image").count() == 0
    public.fill("input[name=password]", "kite-season")
    public.get_by_role("button", name="Open the image").click()
    public.wait_for_function("() => document.querySelector('img.share-image')?.naturalWidth > 0")
    assert "for the club" not in public.content()
    public.screenshot(path=str(stack.artifacts / "share-unlocked.png"))

    # Two views at most, and no download: the third view is the "revoked or expired" page.
    limited_url = create_link(max_views="2", preview_only="on")
    assert "0 views of 2" in page.locator("#share .link-facts").first.inner_text()
    viewer, seen = open_page(browser)
    seen_violations = watch_csp(seen)
    for _ in range(2):
        assert seen.goto(limited_url).status == 200
        seen.wait_for_function("() => document.querySelector('img.share-image').naturalWidth > 0")
        assert seen.get_by_role("link", name="Download the original").count() == 0
        assert "download=1" not in seen.content()
        served = viewer.request.get(seen.locator("img.share-image").get_attribute("src"))
        assert served.headers["content-type"] == "image/webp"  # the preview, not the PNG
        assert viewer.request.get(limited_url + "image?download=1").status == 403
    third = seen.goto(limited_url)
    assert third.status == 404
    assert "This link was revoked or has expired" in seen.locator("main").inner_text()
    page.goto(stack.url + "/shares/")
    assert "2 of 2" in page.locator("table.table").inner_text()

    # The owner edits the first link's options without a reload: the password goes, and the
    # link's views show the new maximum at once.
    page.goto(detail)
    page.evaluate("window.__sameDocument = true")
    facts = page.locator("#share .link-facts").last
    assert " of 7 " not in facts.inner_text()
    options = page.locator("#share details.link-options").last
    options.locator("summary").click()
    options.locator("input[name=remove_password]").check()
    options.locator("input[name=max_views]").fill("7")
    options.get_by_role("button", name="Save options").click()
    page.locator("#share .link-saved").wait_for()
    assert "password" not in page.locator("#share .link-summary").last.inner_text()
    assert " view of 7 · " in facts.inner_text()  # the one view after the password
    assert page.evaluate("window.__sameDocument") is True
    stranger, strange = open_page(browser)
    stranger_violations = watch_csp(strange)
    assert strange.goto(locked_url).status == 200
    assert stranger.request.get(locked_url + "image").status == 200

    # An album whose link allows no download offers no original: not on a tile, not in the
    # viewer, and not by its URL.
    assert strange.goto(stack.url + f"/s/{album}/").status == 200
    assert strange.locator(".tile").count() == 1
    assert strange.get_by_role("link", name="Download original").count() == 0
    assert "download=1" not in strange.content()
    open_viewer(strange)
    strange.wait_for_function(
        "() => [...document.querySelectorAll('.pswp__img')].some(i => i.naturalWidth > 0)"
    )
    assert strange.locator(".pswp__button--download").is_hidden()
    image = strange.locator("a.tile-link").get_attribute("href")
    assert stranger.request.get(stack.url + image + "?download=1").status == 403
    assert violations == public_violations == seen_violations == stranger_violations == []
    for context in (owner, visitor, viewer, stranger):
        context.close()
