"""The guarded result fetcher and image check, against a hostile server on loopback."""

from __future__ import annotations

import functools
import io
import logging
import resource
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import quote

import certifi
import pytest
import urllib3.util.connection
from PIL import Image, ImageFile

from gallery import provider
from simulator import DEFAULT_API_KEY, SimulatorConfig
from tests.hostile import HostileServer, bilevel_png
from tests.support import require

MAX_BYTES = 1024 * 1024
MAX_PIXELS = 40_000_000
CERTIFI_BUNDLE = certifi.where()


def encoded(size: tuple[int, int], image_format: str) -> bytes:
    out = io.BytesIO()
    picture = Image.new("RGB", size, (240, 200, 40))
    if image_format == "PNG":
        picture.save(out, "PNG", compress_level=1)
    else:
        picture.save(out, image_format)
    return out.getvalue()


@functools.cache
def good_png() -> bytes:
    return encoded((1024, 1024), "PNG")


@functools.cache
def good_jpeg() -> bytes:
    return encoded((1024, 1024), "JPEG")


@functools.cache
def bomb_12000() -> bytes:
    return bilevel_png(12000, 12000)


def start_server(context: ssl.SSLContext | None = None) -> HostileServer:
    files = {"good.png": ("image/png", good_png()), "good.jpg": ("image/jpeg", good_jpeg())}
    server = HostileServer(files, context)
    server.start()
    return server


@pytest.fixture(autouse=True)
def pillow_limit(monkeypatch):
    """`open_result_image` sets Pillow's process-wide pixel limit: put it back after each test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    """The file server the tests allow (its host:port is in `allowed_hosts`)."""
    server = start_server()
    yield server
    server.stop()


@pytest.fixture
def bystander() -> Iterator[HostileServer]:
    """Another server on loopback, not allowed: nothing may ever reach it."""
    server = start_server()
    yield server
    server.stop()


@pytest.fixture
def connection_attempts(monkeypatch) -> list[tuple]:
    """Every TCP connection the fetcher tries to open, wherever to."""
    attempts: list[tuple] = []
    real = urllib3.util.connection.create_connection

    def spy(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", spy)
    return attempts


def fetch(url: str, hostile: HostileServer, **options) -> tuple[provider.FetchedResult, bytes]:
    out = io.BytesIO()
    options = {
        "allowed_hosts": [hostile.host_port],
        "max_bytes": MAX_BYTES,
        "deadline": 1.0,
        **options,
    }
    result = provider.fetch_result(url, out, **options)
    return result, out.getvalue()


def refusal(url: str, hostile: HostileServer) -> str:
    with pytest.raises(provider.ResultRefused) as caught:
        fetch(url, hostile)
    return caught.value.message


# Fetching: what is allowed


def test_it_fetches_from_an_allowed_host(hostile):
    result, body = fetch(hostile.url("/files/good.png"), hostile)
    assert body == good_png()
    assert result.bytes_written == len(good_png())
    assert result.content_type == "image/png"
    assert result.final_url == hostile.url("/files/good.png")


def test_it_resolves_once_and_connects_to_the_checked_address(hostile, monkeypatch):
    lookups = []
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        lookups.append(host)
        if host == "files.example":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    url = f"http://files.example:{hostile.server_port}/files/good.png"
    result, body = fetch(url, hostile, allowed_hosts=[f"files.example:{hostile.server_port}"])
    assert body == good_png()
    assert lookups.count("files.example") == 1
    # The original Host went out, though the connection went to 127.0.0.1.
    assert hostile.requests == [("/files/good.png", f"files.example:{hostile.server_port}")]


def test_it_ignores_proxies_from_the_environment(hostile, bystander, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, bystander.url("/"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert fetch(hostile.url("/files/good.png"), hostile)[1] == good_png()
    assert bystander.connections == []


def test_it_follows_up_to_three_redirects_checking_each(hostile):
    result, body = fetch(hostile.url("/hops/3"), hostile)
    assert body == good_png()
    assert result.final_url == hostile.url("/hops/0")
    assert len(hostile.requests) == 4


# Fetching: what is refused, always with the same message and without a connection


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.2",
        "[::1]",
        "2130706433",
        "0x7f000001",
        "127.1",
        "0x7f.1",
        "017700000001",
        "[::ffff:127.0.0.1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "0.0.0.0",
    ],
)
def test_it_refuses_every_spelling_of_loopback(host, hostile, connection_attempts):
    # https, so the refusal comes from the resolved address and not from the scheme.
    url = f"https://{host}:{hostile.server_port}/files/good.png"
    assert refusal(url, hostile) == provider.RESULT_ADDRESS_REFUSED
    assert connection_attempts == []
    assert hostile.connections == []


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "[fd00::1]",
        "[fe80::1]",
        "[::ffff:10.0.0.1]",
        "[2002:a00:1::]",
        "metadata.google.internal",
    ],
)
def test_it_refuses_private_addresses_without_connecting(host, hostile, connection_attempts):
    started = time.monotonic()
    assert refusal(f"https://{host}/latest/meta-data/", hostile) == provider.RESULT_ADDRESS_REFUSED
    assert time.monotonic() - started < 0.5
    assert connection_attempts == []


def test_it_refuses_another_loopback_port(hostile, bystander, connection_attempts):
    for scheme in ("http", "https"):
        url = f"{scheme}://127.0.0.1:{bystander.server_port}/files/good.png"
        assert refusal(url, hostile) == provider.RESULT_ADDRESS_REFUSED
    assert connection_attempts == []
    assert bystander.connections == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/result.png",
        "gopher://127.0.0.1:70/",
        "javascript:alert(1)",
        "//cdn.example.com/result.png",
        "http://93.184.216.34/result.png",
        "http://cdn.example.com/result.png",
        "https://cdn.example.com/result.png\r\nX-Injected: 1",
    ],
)
def test_it_refuses_other_schemes_and_plain_http(url, hostile, connection_attempts, monkeypatch):
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: lookups.append(args))
    assert refusal(url, hostile) == provider.RESULT_ADDRESS_REFUSED
    assert lookups == [] and connection_attempts == []


def test_it_refuses_user_information_in_the_address(hostile):
    url = f"http://user:secret@{hostile.host_port}/files/good.png"
    assert refusal(url, hostile) == provider.RESULT_ADDRESS_REFUSED
    assert hostile.connections == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/files/good.png",
        "https://localhost:{port}/",
        "http://169.254.169.254/",
    ],
)
def test_it_refuses_a_redirect_to_a_refused_address(target, hostile, bystander):
    url = hostile.url("/redirect?to=" + quote(target.format(port=bystander.server_port)))
    assert refusal(url, hostile) == provider.RESULT_ADDRESS_REFUSED
    assert [path for path, _ in hostile.requests] == [url.split(hostile.host_port)[1]]
    assert bystander.connections == []


def test_it_refuses_more_than_three_redirects(hostile):
    assert refusal(hostile.url("/hops/4"), hostile) == provider.RESULT_ADDRESS_REFUSED
    assert len(hostile.requests) == 4


def test_it_gives_one_message_for_every_refused_address(hostile, bystander, caplog):
    urls = [
        f"https://localhost:{hostile.server_port}/",
        f"http://127.0.0.1:{bystander.server_port}/",
        "https://10.0.0.1/",
        "https://metadata.google.internal/",
        "file:///etc/passwd",
        "ftp://example.com/",
        "http://example.com/",
        f"http://a@{hostile.host_port}/",
        hostile.url("/redirect?to=" + quote("https://[::1]/")),
        hostile.url("/hops/5"),
    ]
    with caplog.at_level(logging.WARNING, logger="gallery.provider"):
        messages = {refusal(url, hostile) for url in urls}
    assert messages == {provider.RESULT_ADDRESS_REFUSED}
    # The operator gets the detail.
    assert "resolves to 127.0.0.1, a loopback address" in caplog.text
    assert "does not resolve" in caplog.text
    assert "more than 3 redirects" in caplog.text


# Fetching: size and time


def test_it_cuts_a_trickled_body_off_at_the_deadline(hostile):
    started = time.monotonic()
    with pytest.raises(provider.ResultUnavailable) as caught:
        fetch(hostile.url("/trickle"), hostile, deadline=1.0)
    assert time.monotonic() - started < 2.0
    assert caught.value.message == provider.RESULT_TOO_SLOW


def test_it_cuts_trickled_headers_off_at_the_deadline(hostile):
    started = time.monotonic()
    with pytest.raises(provider.ResultUnavailable):
        fetch(hostile.url("/slow-headers"), hostile, deadline=1.0)
    assert time.monotonic() - started < 2.0


def test_it_refuses_a_declared_size_above_the_cap_before_reading(hostile):
    out = io.BytesIO()
    started = time.monotonic()
    with pytest.raises(provider.ResultRefused) as caught:
        provider.fetch_result(
            hostile.url("/declared-huge"),
            out,
            allowed_hosts=[hostile.host_port],
            max_bytes=MAX_BYTES,
            deadline=5.0,
        )
    assert caught.value.message == provider.RESULT_TOO_LARGE
    assert out.tell() == 0
    assert time.monotonic() - started < 1.0


def test_it_cuts_off_a_body_that_grows_past_the_cap(hostile):
    out = io.BytesIO()
    with pytest.raises(provider.ResultRefused) as caught:
        provider.fetch_result(
            hostile.url("/endless"),
            out,
            allowed_hosts=[hostile.host_port],
            max_bytes=MAX_BYTES,
            deadline=5.0,
        )
    assert caught.value.message == provider.RESULT_TOO_LARGE
    assert 0 < out.tell() <= MAX_BYTES


def test_it_reports_a_body_that_breaks_off(hostile):
    with pytest.raises(provider.ResultUnavailable) as caught:
        fetch(hostile.url("/cut"), hostile)
    assert caught.value.message == provider.RESULT_BROKEN_OFF


# Fetching: what the file host answers


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_it_reports_server_errors_as_unavailable(status, hostile):
    with pytest.raises(provider.ResultUnavailable, match=str(status)):
        fetch(hostile.url(f"/status/{status}"), hostile)


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_it_reports_an_expired_file_as_gone(status, hostile):
    with pytest.raises(provider.ResultGone) as caught:
        fetch(hostile.url(f"/status/{status}"), hostile)
    assert caught.value.message == provider.RESULT_GONE


def test_it_reports_a_refused_connection_as_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(provider.ResultUnavailable) as caught:
        provider.fetch_result(
            f"http://127.0.0.1:{port}/result.png",
            io.BytesIO(),
            allowed_hosts=[f"127.0.0.1:{port}"],
            max_bytes=MAX_BYTES,
            deadline=1.0,
        )
    assert caught.value.message == provider.RESULT_UNREACHABLE


def test_it_keeps_result_errors_apart_from_provider_errors():
    # An `except ProviderError` around the jobs API must never swallow a download's error.
    for error in (provider.ResultRefused, provider.ResultGone, provider.ResultUnavailable):
        assert issubclass(error, provider.ResultError)
        assert not issubclass(error, provider.ProviderError)


# Fetching over https: the certificate is checked against the URL's host name


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    require(shutil.which("openssl") is not None, "openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=files.example",
         "-addext", "subjectAltName=DNS:files.example"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate, monkeypatch) -> Iterator[HostileServer]:
    """A server with a certificate for files.example; files.example and other.example resolve
    to it, and its certificate is the only one trusted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = start_server(context)
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host in ("files.example", "other.example"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(certifi, "where", lambda: certificate[0])
    yield server
    server.stop()


def fetch_tls(host: str, server: HostileServer) -> bytes:
    out = io.BytesIO()
    provider.fetch_result(
        f"https://{host}:{server.server_port}/files/good.png",
        out,
        allowed_hosts=[f"{host}:{server.server_port}"],
        max_bytes=MAX_BYTES,
        deadline=2.0,
    )
    return out.getvalue()


def test_it_checks_the_certificate_against_the_host_name(tls_server):
    assert fetch_tls("files.example", tls_server) == good_png()
    assert tls_server.requests == [("/files/good.png", f"files.example:{tls_server.server_port}")]


def test_it_refuses_a_certificate_for_another_name(tls_server):
    with pytest.raises(provider.ResultUnavailable):
        fetch_tls("other.example", tls_server)
    assert tls_server.requests == []


def test_it_refuses_an_untrusted_certificate(tls_server, monkeypatch):
    monkeypatch.setattr(certifi, "where", lambda: CERTIFI_BUNDLE)
    with pytest.raises(provider.ResultUnavailable):
        fetch_tls("files.example", tls_server)
    assert tls_server.requests == []


# Images


def check(data: bytes | str, output_format="png", aspect_ratio="1:1", resolution="1K", **kw):
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return provider.open_result_image(
        source,
        output_format=output_format,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        max_pixels=kw.get("max_pixels", MAX_PIXELS),
    )


def refused_image(data: bytes, **options) -> str:
    with pytest.raises(provider.ResultRefused) as caught:
        check(data, **options)
    return caught.value.message


@pytest.mark.parametrize("aspect_ratio", provider.ASPECT_RATIOS)
def test_it_accepts_every_documented_size_at_1k(aspect_ratio):
    size = provider.documented_size(aspect_ratio, "1K")
    result = check(encoded(size, "PNG"), aspect_ratio=aspect_ratio)
    assert (result.width, result.height, result.format) == (*size, "PNG")


def test_it_accepts_a_jpeg_from_a_file_left_at_its_end(tmp_path):
    path = tmp_path / "result.jpg"
    with open(path, "w+b") as out:
        out.write(good_jpeg())
        result = check(out, output_format="jpg")
    assert (result.width, result.height, result.format) == (1024, 1024, "JPEG")
    assert check(str(path), output_format="jpg").picture.getpixel((0, 0)) == (240, 200, 40)


def test_it_accepts_a_smaller_image_than_documented():
    assert check(encoded((512, 512), "PNG")).width == 512


def test_it_refuses_a_jpeg_when_a_png_was_asked():
    assert "JPEG" in refused_image(good_jpeg())
    assert "PNG" in refused_image(good_png(), output_format="jpg")


def test_it_refuses_what_is_not_a_png_or_jpeg():
    assert refused_image(b"<html>Not found</html>") == provider.IMAGE_NOT_READABLE
    assert refused_image(encoded((1024, 1024), "GIF")) == provider.IMAGE_NOT_READABLE


@pytest.mark.parametrize(
    ("data", "output_format"),
    [
        pytest.param(good_png()[: len(good_png()) // 2], "png", id="png-cut-in-half"),
        pytest.param(good_png()[:-12], "png", id="png-without-its-end"),
        pytest.param(good_jpeg()[: len(good_jpeg()) // 2], "jpg", id="jpeg-cut-in-half"),
    ],
)
def test_it_refuses_a_truncated_image(data, output_format):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    assert refused_image(data, output_format=output_format) == provider.IMAGE_INCOMPLETE


def test_it_refuses_a_size_far_from_the_one_asked():
    four_times = encoded((2048, 2048), "PNG")
    assert refused_image(four_times) == provider.IMAGE_TOO_MANY_PIXELS
    assert check(four_times, resolution="2K").width == 2048


@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, 10**9])
def test_it_refuses_a_12000_square_png_from_its_header(max_pixels, monkeypatch):
    # Both guards refuse it alone: Pillow's limit (40 Mpx) and the size tolerance (10**9 makes
    # Pillow's limit moot). Decoded, this 18 kB file would take 144 MB. tracemalloc does not see
    # Pillow's pixel memory, so the test checks that no decoding starts, and the peak RSS.
    data = bomb_12000()
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: loads.append(self) or real_load(self)
    )
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    assert refused_image(data, max_pixels=max_pixels) == provider.IMAGE_TOO_MANY_PIXELS
    assert time.monotonic() - started < 0.5
    assert loads == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024


def test_it_refuses_a_30000_square_png():
    data = bilevel_png(30000, 30000, complete=False)
    assert refused_image(data) == provider.IMAGE_TOO_MANY_PIXELS
    assert refused_image(data, max_pixels=10**10) == provider.IMAGE_TOO_MANY_PIXELS


def test_it_makes_pillows_bomb_warning_an_error():
    # 1024x1024 is within the size tolerance; above a 600,000-pixel limit Pillow only warns.
    assert refused_image(good_png(), max_pixels=600_000) == provider.IMAGE_TOO_MANY_PIXELS


# The client and the simulator


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    # The "pro" tier allows 100 queries a second, so the tests may poll fast.
    return SimulatorConfig(speed=0.02, seed=1, api_keys={DEFAULT_API_KEY: "pro"})


def finished(client: provider.ProviderClient, prompt: str) -> provider.TaskRecord:
    task_id = client.create_task(prompt)
    deadline = time.monotonic() + 10
    while (record := client.get_task(task_id)).is_pending:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return record


def test_it_keeps_at_most_max_result_urls(simulator, caplog):
    client = provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY, max_result_urls=3)
    with caplog.at_level(logging.WARNING, logger="gallery.provider"):
        record = finished(client, "eight bananas [sim:multi=8]")
    assert len(record.result_urls) == 3
    assert "names 8 result URLs; keeping the first 3" in caplog.text


def test_it_reads_max_result_urls_from_settings(settings):
    settings.AIGPTIMAGE_MAX_RESULT_URLS = 2
    client = provider.get_client()
    assert client.max_result_urls == 2
    assert provider.get_client() is client


def test_it_fetches_and_checks_a_simulator_result(simulator, settings):
    client = provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY)
    record = finished(client, "a banana, tall [sim:multi=2]")
    out = io.BytesIO()
    result = provider.fetch_result(
        record.result_urls[0],
        out,
        allowed_hosts=settings.AIGPTIMAGE_RESULT_HOSTS_ALLOWED,
        max_bytes=settings.DOWNLOAD_MAX_BYTES,
        deadline=5.0,
    )
    assert result.bytes_written == out.tell() and result.content_type == "image/png"
    image = check(out, aspect_ratio="auto", max_pixels=settings.IMAGE_MAX_PIXELS)
    assert (image.width, image.height) == (1024, 1024)
