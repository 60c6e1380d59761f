"""The provider client against the simulator, over real loopback HTTP."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from PIL import Image

from gallery import provider
from simulator import DEFAULT_API_KEY, SimulatorConfig, start_in_thread
from simulator.config import Tier

# Documented output sizes at 1K (docs/provider-contract.md); 2K doubles and 4K quadruples each
# side.
SIZES_1K = {
    "auto": (1024, 1024),
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (384, 3072),
    "8:1": (3072, 384),
}


@pytest.fixture
def simulator_config() -> SimulatorConfig:
    # The "pro" tier allows 100 queries a second: these tests poll fast to see every state.
    return SimulatorConfig(speed=0.05, seed=1, api_keys={DEFAULT_API_KEY: "pro"})


@pytest.fixture
def client(simulator) -> provider.ProviderClient:
    return provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY, timeout=5)


def wait_for(client: provider.ProviderClient, task_id: str, seconds: float = 10):
    states = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        record = client.get_task(task_id)
        if not states or states[-1] != record.state:
            states.append(record.state)
        if not record.is_pending:
            return record, states
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} still pending after {seconds} s: {states}")


def test_it_walks_every_state_to_success(client):
    task_id = client.create_task("a yellow banana on a blue table", request_id="walk-1")
    assert task_id.startswith("task_")
    record, states = wait_for(client, task_id)
    assert states == ["waiting", "queuing", "generating", "success"]
    assert record.succeeded and not record.is_pending
    assert len(record.result_urls) == 1
    assert record.fail_code == "" and record.fail_message == ""
    assert record.cost_time_ms is not None and record.cost_time_ms >= 0
    assert isinstance(record.create_time, datetime) and isinstance(record.complete_time, datetime)
    assert record.complete_time >= record.create_time


def test_it_reports_a_fail_result(client):
    task_id = client.create_task("something refused [sim:fail]")
    record, states = wait_for(client, task_id)
    assert states[-1] == "fail"
    assert record.failed
    assert record.fail_code == "400"
    assert record.fail_message
    assert record.result_urls == []
    assert record.cost_time_ms is None or record.cost_time_ms >= 0


def test_it_treats_an_unknown_state_as_pending(client):
    task_id = client.create_task("odd state [sim:unknown-state]")
    record, states = wait_for(client, task_id)
    assert "preparing" in states
    assert record.succeeded


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ("[sim:400]", provider.BadRequest),
        ("[sim:401]", provider.Unauthorized),
        ("[sim:402]", provider.InsufficientCredits),
        ("[sim:409]", provider.Conflict),
        ("[sim:422]", provider.ValidationFailed),
        ("[sim:500]", provider.ServerError),
    ],
)
def test_it_raises_one_exception_per_error_code(client, marker, error):
    with pytest.raises(error) as caught:
        client.create_task(f"a prompt {marker}")
    assert caught.value.code == error.code
    assert caught.value.message and not caught.value.message.startswith("The provider answered")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (455, provider.ServerError),
        (501, provider.ValidationFailed),
        (505, provider.ValidationFailed),
    ],
)
def test_it_maps_the_familys_own_codes(client, code, error):
    with pytest.raises(error) as caught:
        client.create_task(f"a prompt [sim:{code}]")
    assert caught.value.code == code
    assert caught.value.message and not caught.value.message.startswith("The provider answered")


def test_it_raises_unauthorized_for_a_wrong_key(simulator):
    client = provider.ProviderClient(simulator.base_url, "not-a-key", timeout=5)
    with pytest.raises(provider.Unauthorized) as caught:
        client.create_task("hello")
    assert caught.value.message


def test_it_raises_validation_failed_with_the_providers_message(client):
    with pytest.raises(provider.ValidationFailed) as caught:
        client.create_task("hello", aspect_ratio="7:3")
    assert "aspect_ratio" in caught.value.message


def test_it_raises_task_not_found_for_an_unknown_task(client):
    with pytest.raises(provider.TaskNotFound) as caught:
        client.get_task("task_does_not_exist")
    assert caught.value.code == 404


def test_it_raises_task_not_found_when_a_task_vanishes(client):
    task_id = client.create_task("gone soon [sim:query404]")
    with pytest.raises(provider.TaskNotFound):
        client.get_task(task_id)


def test_it_raises_server_error_on_query_500(client):
    task_id = client.create_task("flaky [sim:query500=1]")
    with pytest.raises(provider.ServerError):
        client.get_task(task_id)
    record, _ = wait_for(client, task_id)
    assert record.succeeded


def test_it_makes_one_task_for_the_same_request_id(client, simulator):
    first = client.create_task("twice", request_id="same-id")
    second = client.create_task("twice", request_id="same-id")
    assert first == second
    status = simulator.simulator.status()
    assert status["createTask"]["byRequestId"]["same-id"] == 2
    assert status["tasksByRequestId"]["same-id"] == [first]
    assert status["tasksCreated"] == 1


def test_it_charges_once_for_the_same_request_id(simulator):
    simulator.simulator.config.credits = 1
    client = provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY, timeout=5)
    task_id = client.create_task("once", request_id="charged-once")
    assert client.create_task("once", request_id="charged-once") == task_id
    with pytest.raises(provider.InsufficientCredits):
        client.create_task("another", request_id="other")


def test_it_sends_a_request_id_on_every_call(client, simulator):
    client.create_task("no explicit id")
    client.create_task("no explicit id")
    by_id = simulator.simulator.status()["createTask"]["byRequestId"]
    assert len(by_id) == 2


def test_it_reads_the_wait_from_the_429_body(client):
    with pytest.raises(provider.RateLimited) as caught:
        client.create_task("slow down [sim:429=1]")
    assert caught.value.retry_after == pytest.approx(1, abs=0.01)
    assert caught.value.code == 429


def test_it_reads_the_wait_from_a_retry_after_header_in_seconds(client):
    with pytest.raises(provider.RateLimited) as caught:
        client.create_task("slow down [sim:429-header=1]")
    assert caught.value.retry_after == pytest.approx(1, abs=0.01)


def test_it_reads_the_wait_from_a_retry_after_http_date(client):
    with pytest.raises(provider.RateLimited) as caught:
        client.create_task("slow down [sim:429-date=1]")
    # An HTTP date has one-second precision, so the wait is a little under or over.
    assert 0 <= caught.value.retry_after <= 3


def test_it_is_rate_limited_per_tier(simulator):
    simulator.simulator.config.api_keys = {"free-key": "free"}
    client = provider.ProviderClient(simulator.base_url, "free-key", timeout=5)
    client.create_task("first")
    with pytest.raises(provider.RateLimited) as caught:
        client.create_task("second in the same second")
    assert caught.value.retry_after >= 1


def test_it_gets_409_at_the_active_task_limit(simulator):
    simulator.simulator.config.api_keys = {"free-key": "free"}
    simulator.simulator.config.speed = 1.0
    client = provider.ProviderClient(simulator.base_url, "free-key", timeout=5)
    client.create_task("the one active task")
    time.sleep(1.05)  # past the free tier's one-per-second create limit
    with pytest.raises(provider.Conflict) as caught:
        client.create_task("a second active task")
    assert caught.value.code == 409


def test_it_turns_a_non_json_answer_into_bad_response(client):
    with pytest.raises(provider.BadResponse):
        client.create_task("html please [sim:broken]")


def test_it_turns_a_malformed_record_into_bad_response(client):
    task_id = client.create_task("broken record [sim:broken-query]")
    with pytest.raises(provider.BadResponse):
        client.get_task(task_id)


def test_it_turns_a_slow_answer_into_a_timeout(simulator):
    client = provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY, timeout=0.2)
    with pytest.raises(provider.ProviderTimeout):
        client.create_task("take your time [sim:slow=1]")


def test_it_turns_a_refused_connection_into_unreachable():
    client = provider.ProviderClient("http://127.0.0.1:9", DEFAULT_API_KEY, timeout=2)
    with pytest.raises(provider.ProviderUnreachable):
        client.get_task("task_x")


def test_it_reads_message_instead_of_msg(simulator):
    simulator.simulator.config.message_key = "message"
    client = provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY, timeout=5)
    with pytest.raises(provider.ValidationFailed) as caught:
        client.create_task("hello", resolution="8K")
    assert "resolution" in caught.value.message


def test_it_accepts_empty_fail_code_on_success(simulator):
    simulator.simulator.config.empty_fail_code = True
    client = provider.ProviderClient(simulator.base_url, DEFAULT_API_KEY, timeout=5)
    record, _ = wait_for(client, client.create_task("fine"))
    assert record.succeeded and record.fail_code == ""


def test_it_returns_every_result_url(client):
    record, _ = wait_for(client, client.create_task("two please [sim:multi]"))
    assert len(record.result_urls) == 2
    assert len(set(record.result_urls)) == 2


def test_it_sees_an_expired_result_url_refused(client):
    record, _ = wait_for(client, client.create_task("too late [sim:expired]"))
    response = requests.get(record.result_urls[0], timeout=5)
    assert response.status_code == 403
    assert not response.headers.get("Content-Type", "").startswith("image/")


def _download(client, aspect_ratio: str, resolution: str, output_format: str) -> Image.Image:
    task_id = client.create_task(
        f"size check {aspect_ratio}",
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        output_format=output_format,
    )
    record, _ = wait_for(client, task_id, seconds=30)
    response = requests.get(record.result_urls[0], timeout=30)
    assert response.status_code == 200
    expected_type = "image/png" if output_format == "png" else "image/jpeg"
    assert response.headers["Content-Type"] == expected_type
    image = Image.open(io.BytesIO(response.content))
    assert image.format == ("PNG" if output_format == "png" else "JPEG")
    return image


@pytest.fixture(scope="module")
def quick_client() -> Iterator[provider.ProviderClient]:
    """Renders of a few milliseconds: these tests are about the files, not the wait."""
    unlimited = Tier(1000, 60_000, 1000, 60_000, 100)
    config = SimulatorConfig(
        speed=0.001,
        seed=1,
        api_keys={DEFAULT_API_KEY: "unlimited"},
        extra_tiers={"unlimited": unlimited},
    )
    server = start_in_thread(config)
    yield provider.ProviderClient(server.base_url, DEFAULT_API_KEY, timeout=30)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("aspect_ratio", list(SIZES_1K))
def test_it_downloads_the_documented_size_at_1k(quick_client, aspect_ratio):
    assert _download(quick_client, aspect_ratio, "1K", "png").size == SIZES_1K[aspect_ratio]


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "output_format", "factor"),
    [("16:9", "2K", "jpg", 2), ("1:1", "4K", "png", 4), ("1:8", "4K", "jpg", 4)],
)
def test_it_downloads_the_documented_size_at_2k_and_4k(
    quick_client, aspect_ratio, resolution, output_format, factor
):
    width, height = SIZES_1K[aspect_ratio]
    image = _download(quick_client, aspect_ratio, resolution, output_format)
    assert image.size == (width * factor, height * factor)


class _HeaderOnly429(BaseHTTPRequestHandler):
    """A server of the family that gives the wait only as an HTTP date, with `message`."""

    def do_POST(self):  # noqa: N802 - the stdlib's name
        when = datetime.now(UTC) + timedelta(seconds=30)
        body = json.dumps({"code": 429, "message": "too many", "data": None}).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", format_datetime(when, usegmt=True))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_it_parses_a_retry_after_date_far_ahead():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderOnly429)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = provider.ProviderClient(f"http://127.0.0.1:{server.server_port}", "k", timeout=5)
        with pytest.raises(provider.RateLimited) as caught:
            client.create_task("x")
        assert 27 <= caught.value.retry_after <= 31
        assert caught.value.message == "too many"
    finally:
        server.shutdown()
        server.server_close()


class _OddCostTime(BaseHTTPRequestHandler):
    """A task record whose costTime is the raw JSON text in the server's `cost_time`."""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = (
            '{"code": 200, "msg": "success", "data": {"taskId": "task_odd", "state": "success",'
            ' "resultJson": "{\\"resultUrls\\": [\\"http://127.0.0.1:9/a.png\\"]}",'
            f' "costTime": {self.server.cost_time}, "createTime": 1764000000000}}}}'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12345", 12345),
        ("12345.9", 12345),
        ("NaN", None),
        ("Infinity", None),
        ("-5", None),
        ("1e30", None),
        ("2147483648", None),
        ("true", None),
        ('"12345"', None),
        ("null", None),
    ],
)
def test_it_keeps_a_record_with_an_odd_cost_time(raw, expected):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddCostTime)
    server.cost_time = raw
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = provider.ProviderClient(f"http://127.0.0.1:{server.server_port}", "k", timeout=5)
        record = client.get_task("task_odd")
        assert record.succeeded and record.result_urls == ["http://127.0.0.1:9/a.png"]
        assert record.cost_time_ms == expected
    finally:
        server.shutdown()
        server.server_close()
