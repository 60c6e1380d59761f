"""What `make run` serves and the settings a production host runs with.

`make run` (scripts/run.sh) runs for real on a copy of the checkout, as on a fresh clone: no
secret key, no database, no environment but a shell's. The production checks run
`manage.py check --deploy` under the environment file of docs/deploy.md, as written there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import requests
from django.test import Client

from tests.factories import done_generation, make_generation

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
# A shell's environment and nothing of the test's: no settings module, key or database.
SHELL_VARIABLES = ("PATH", "HOME", "LANG", "TMPDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shell_environment(**extra: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in SHELL_VARIABLES if name in os.environ}
    return {**env, **extra}


def settings_with(monkeypatch, **env: str) -> ModuleType:
    """banana_site/settings.py run afresh with these variables, as a new process would."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(
        "settings_under_test", ROOT / "banana_site" / "settings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Production settings


def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off():
    env = shell_environment(DEBUG="0")
    for command in (
        [*MANAGE, "check"],
        [sys.executable, "-m", "gunicorn", "banana_site.wsgi:application", "--check-config"],
    ):
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0, command
        assert "SECRET_KEY is not set. Set it to a long random value" in done.stderr, done.stderr
    # With DEBUG on, a development key will do.
    done = subprocess.run(
        [*MANAGE, "check"], env=shell_environment(DEBUG="1"), cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr


def documented_environment_file(tmp_path: Path) -> Path:
    """The production environment file of docs/deploy.md, with its `…` placeholders filled."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"```sh\n(# /etc/banana-gallery/env\n.*?)```", guide, re.DOTALL)
    assert block, "docs/deploy.md has no environment file"
    text = re.sub(
        r"^SECRET_KEY=.*$", f"SECRET_KEY={secrets.token_urlsafe(50)}", block[1], flags=re.M
    )
    path = tmp_path / "env"
    path.write_text(text.replace("…", "placeholder"))
    return path


def test_it_passes_check_deploy_under_the_documented_production_environment(tmp_path):
    env_file = documented_environment_file(tmp_path)
    # Loaded as the guide loads it, into a shell's environment.
    script = f'set -a; . "{env_file}"; set +a; exec "$@"'
    command = [
        "bash",
        "-c",
        script,
        "bash",
        *MANAGE,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
    ]
    done = subprocess.run(
        command, env=shell_environment(), cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    # The same file without the HTTPS variables is warned about, so the check is a real one.
    lines = env_file.read_text().splitlines()
    env_file.write_text("\n".join(line for line in lines if not line.startswith("SECURE_")))
    done = subprocess.run(
        command, env=shell_environment(), cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr


def test_it_reads_the_proxy_and_https_settings_from_the_environment(monkeypatch):
    module = settings_with(
        monkeypatch,
        SECRET_KEY="x" * 50,
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        CLIENT_IP_HEADER="X-Real-IP",
        TRUSTED_PROXY_COUNT="1",
        SECURE_SSL_REDIRECT="1",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
        SECURE_HSTS_PRELOAD="1",
        SECURE_COOKIES="1",
    )
    assert module.SECURE_PROXY_SSL_HEADER == ("HTTP_X_FORWARDED_PROTO", "https")
    assert module.ALLAUTH_TRUSTED_CLIENT_IP_HEADER == "X-Real-IP"
    assert module.ALLAUTH_TRUSTED_PROXY_COUNT == 1
    assert module.SECURE_SSL_REDIRECT and module.SECURE_HSTS_SECONDS == 31536000
    assert module.SECURE_HSTS_INCLUDE_SUBDOMAINS and module.SECURE_HSTS_PRELOAD
    assert module.SESSION_COOKIE_SECURE and module.CSRF_COOKIE_SECURE
    with pytest.raises(ValueError, match="SECURE_PROXY_SSL_HEADER: 'X-Forwarded-Proto: https'"):
        settings_with(monkeypatch, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    with pytest.raises(ValueError, match="LOG_LEVEL: 'LOUD' is not DEBUG, INFO, WARNING"):
        settings_with(monkeypatch, SECURE_PROXY_SSL_HEADER="", LOG_LEVEL="loud")


def test_it_knows_a_request_came_over_https_from_the_proxys_header(db, alice, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    client = Client()
    client.force_login(alice)
    plain = client.get("/usage/")
    assert plain.status_code == 301 and plain["Location"] == "https://testserver/usage/"
    secure = client.get("/usage/", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=3600"


def test_it_logs_one_line_per_generation_that_finished_or_failed(db, alice, caplog):
    caplog.set_level(logging.INFO, logger="gallery.outcomes")
    done = done_generation(alice, status="downloading", finished_at=None)
    failed = make_generation(alice, status="queued")
    assert done.mark_done() and failed.mark_failed("The image service said no.", "refused")
    assert not done.mark_done()  # a second time is not a second line
    lines = [r.getMessage() for r in caplog.records if r.name == "gallery.outcomes"]
    assert len(lines) == 2
    assert re.fullmatch(rf"Generation {done.pk} done in \d+ s: 1K auto PNG", lines[0])
    assert re.fullmatch(
        rf"Generation {failed.pk} failed after \d+ s \(refused\): The image service said no\.",
        lines[1],
    )


def test_it_shows_only_what_a_person_needs_by_default(monkeypatch):
    quiet = settings_with(monkeypatch, SECRET_KEY="x" * 50).LOGGING
    assert quiet["root"]["level"] == "WARNING"  # django-q2's lines are INFO
    assert quiet["loggers"]["gallery.outcomes"]["level"] == "INFO"
    assert quiet["loggers"]["django"]["level"] == "ERROR"  # not one line per 404
    detailed = settings_with(monkeypatch, LOG_LEVEL="info").LOGGING
    assert detailed["root"]["level"] == "INFO"
    assert detailed["loggers"]["django"]["level"] == "WARNING"


# make run


def processes_in(folder: Path) -> set[int]:
    """Every process working in `folder`: whatever `make run` started there."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == folder:
                    found.add(int(entry.name))
            except OSError:  # gone meanwhile, or a zombie
                continue
    return found


def wait_for(check, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {seconds} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return True


def form_post(session: requests.Session, url: str, data: dict) -> requests.Response:
    token = session.cookies["csrftoken"]
    return session.post(url, {**data, "csrfmiddlewaretoken": token}, timeout=30)


@pytest.mark.timeout(400)
def test_it_serves_a_fresh_clone_with_gunicorn_and_stops_everything_on_ctrl_c(tmp_path):
    checkout = tmp_path / "banana-gallery"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "media", "staticfiles", "db.sqlite3*", "__pycache__",
            ".pytest_cache", ".ruff_cache", "test-artifacts", "screenshots", "*.egg-info",
        ),
    )  # fmt: skip
    port, simulator_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = shell_environment(
        VENV=sys.prefix, PORT=str(port), SIMULATOR_PORT=str(simulator_port), SIMULATOR_SPEED="0.05"
    )
    log = tmp_path / "terminal.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip
    try:
        wait_for(lambda: answers(url + "/accounts/login/"), 240, "the site", log)
        assert (checkout / "var" / "secret_key").stat().st_mode & 0o077 == 0

        login = requests.get(url + "/accounts/login/", timeout=10)
        assert login.status_code == 200 and login.headers["Server"].startswith("gunicorn")
        missing = requests.get(url + "/no-such-page/", timeout=10)
        assert missing.status_code == 404
        assert "<title>Not found · Banana Gallery</title>" in missing.text
        assert "DEBUG = True" not in missing.text

        session = requests.Session()
        session.get(url + "/accounts/signup/", timeout=10)
        password = "a-long-pass-phrase"
        signup = {"username": "erin", "email": "erin@example.com"}
        signup |= {"password1": password, "password2": password}
        assert form_post(session, url + "/accounts/signup/", signup).url == url + "/"
        generate = {"prompt": "a kite over the dunes", "aspect_ratio": "auto", "resolution": "1K"}
        generate |= {"output_format": "png", "count": "1"}
        assert form_post(session, url + "/generations/new/", generate).url == url + "/"
        wait_for(lambda: "Generation 1 done in" in log.read_text(), 90, "the image", log)

        revoke = (
            "from gallery.models import Image, ShareLink; "
            "link = ShareLink.objects.create(image=Image.objects.get()); link.revoke(); "
            "print(link.token)"
        )
        token = subprocess.run(
            ["bash", "scripts/run.sh", "manage", "shell", "-c", revoke],
            cwd=checkout, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        gone = requests.get(f"{url}/s/{token}/", timeout=10)
        assert gone.status_code == 404
        assert "This link was revoked or has expired" in gone.text

        terminal = log.read_text()
        assert f"Banana Gallery is running: {url}/" in terminal
        assert "django-q" not in terminal and "Processed" not in terminal
        # The start, the sign-up's verification mail (17 lines) and the image's line.
        assert len(terminal.splitlines()) < 40, terminal

        started = processes_in(checkout)
        assert len(started) >= 6, started  # honcho, gunicorn and its workers, cluster, simulator
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground process group
        wait_for(lambda: not processes_in(checkout), 15, "every process stopped", log)
        assert run.wait(timeout=5) is not None
    finally:
        for pid in processes_in(checkout):
            os.kill(pid, signal.SIGKILL)
