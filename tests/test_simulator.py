"""The provider simulator, over real loopback HTTP, against the contract it stands in for."""

from __future__ import annotations

import email.utils
import io
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageChops, ImageStat

from simulator import (
    ASPECT_RATIOS,
    DEFAULT_API_KEY,
    MODEL,
    TIERS,
    SimulatorConfig,
    SimulatorServer,
    Tier,
    image_size,
    make_server,
    parse_tiers,
    start_in_thread,
)

CREATE = "/api/v1/jobs/createTask"
QUERY = "/api/v1/jobs/recordInfo"
FINAL_STATES = ("success", "fail")


class Api:
    """A bare client: sends exactly what it is told and interprets nothing."""

    def __init__(self, server: SimulatorServer, key: str = DEFAULT_API_KEY) -> None:
        self.base_url = server.base_url
        self.key = key
        self.session = requests.Session()

    def headers(self, key: str | None) -> dict[str, str]:
        key = self.key if key is None else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def create(
        self,
        prompt: str = "a banana on the moon",
        *,
        request_id: str | None = None,
        key: str | None = None,
        body: Any = None,
        timeout: float = 10,
        **task_input: str,
    ) -> requests.Response:
        if body is None:
            body = {"model": MODEL, "input": {"prompt": prompt, **task_input}}
        headers = self.headers(key) | {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-ID"] = request_id
        data = body if isinstance(body, bytes) else json.dumps(body)
        return self.session.post(
            self.base_url + CREATE, data=data, headers=headers, timeout=timeout
        )

    def create_task(self, prompt: str = "a banana on the moon", **kwargs: Any) -> str:
        response = self.create(prompt, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()["data"]["taskId"]

    def query(self, task_id: str | None, *, key: str | None = None) -> requests.Response:
        params = {} if task_id is None else {"taskId": task_id}
        return self.session.get(
            self.base_url + QUERY, params=params, headers=self.headers(key), timeout=10
        )

    def record(self, task_id: str) -> dict[str, Any]:
        response = self.query(task_id)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def wait(self, task_id: str, *, interval: float = 0.06) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            record = self.record(task_id)
            if record["state"] in FINAL_STATES:
                return record
            time.sleep(interval)
        raise AssertionError(f"{task_id} did not finish")

    def states(self, task_id: str) -> list[str]:
        """Every state seen while polling fast (the key must allow it), in order, no repeats."""
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = self.record(task_id)["state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in FINAL_STATES:
                return seen
            time.sleep(0.015)
        raise AssertionError(f"{task_id} did not finish: {seen}")

    def download(self, url: str) -> requests.Response:
        return self.session.get(url, timeout=10)


@pytest.fixture
def api(simulator: SimulatorServer) -> Api:
    return Api(simulator)


def use_tier(server: SimulatorServer, tier: str, key: str = DEFAULT_API_KEY) -> None:
    server.simulator.config.api_keys = {key: tier}


def assert_envelope(response: requests.Response, code: int, *words: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    payload = response.json()
    assert set(payload) == {"code", "msg", "data"}
    assert payload["code"] == code
    for word in words:
        assert word in payload["msg"]
    return payload


def result_urls(record: dict[str, Any]) -> list[str]:
    return json.loads(record["resultJson"])["resultUrls"]


def image_of(response: requests.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Length"] == str(len(response.content))
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def epoch_ms() -> int:
    return int(time.time() * 1000)


def finished(api: Api, task_ids: list[str]) -> list[dict[str, Any]]:
    """The final records of many tasks, polled round by round (the key must allow it)."""
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while len(records) < len(task_ids):
        assert time.monotonic() < deadline, f"{len(task_ids) - len(records)} tasks did not finish"
        for task_id in task_ids:
            if task_id not in records:
                record = api.record(task_id)
                if record["state"] in FINAL_STATES:
                    records[task_id] = record
        time.sleep(0.05)
    return [records[task_id] for task_id in task_ids]


# A tier without practical limits, for tests that make many tasks.
UNLIMITED = {
    "api_keys": {DEFAULT_API_KEY: "unlimited"},
    "extra_tiers": parse_tiers("unlimited:1000/1000/1000"),
}


@pytest.fixture
def fast_api(api, simulator) -> Api:
    simulator.simulator.config.extra_tiers = UNLIMITED["extra_tiers"]
    use_tier(simulator, "unlimited")
    return api


# Validation and keys -----------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 20_001])
def test_it_rejects_a_prompt_outside_1_to_20000_characters(api, length):
    assert_envelope(api.create("x" * length), 422, "prompt", "20000")


def test_it_accepts_a_prompt_of_20000_characters(api):
    assert_envelope(api.create("x" * 20_000), 200, "success")


def test_it_rejects_an_unknown_model(api):
    body = {"model": "nano-banana-1", "input": {"prompt": "hello"}}
    assert_envelope(api.create(body=body), 422, "model", MODEL)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("aspect_ratio", "7:3", "auto, 1:1, 1:4"),
        ("aspect_ratio", "", "21:9"),
        ("resolution", "8K", "1K, 2K, 4K"),
        ("resolution", "1k", "1K, 2K, 4K"),
        ("output_format", "webp", "png, jpg"),
        ("output_format", "jpeg", "png, jpg"),
    ],
)
def test_it_rejects_a_bad_enum_value_naming_the_field(api, field, value, allowed):
    assert_envelope(api.create(**{field: value}), 422, field, allowed)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        [1, 2],
        {"model": MODEL},
        {"model": MODEL, "input": "a banana"},
        {"model": MODEL, "input": {"aspect_ratio": "1:1"}},
        {"model": MODEL, "input": {"prompt": 42}},
    ],
)
def test_it_answers_400_to_a_malformed_body(api, body):
    payload = assert_envelope(api.create(body=body), 400)
    assert payload["msg"] and payload["data"] is None


@pytest.mark.parametrize("key", ["", "not-a-key"])
def test_it_answers_401_without_a_valid_key(api, key):
    assert_envelope(api.create(key=key), 401, "API key")
    assert_envelope(api.query("task_x", key=key), 401, "API key")


def test_it_applies_the_defaults_and_returns_the_original_body_as_param(api):
    body = {"model": MODEL, "input": {"prompt": "défauts ☀"}}
    record = api.wait(api.create_task(body=body))
    assert json.loads(record["param"]) == body
    urls = result_urls(record)
    assert urls[0].endswith(".png")
    assert image_of(api.download(urls[0])).size == (1024, 1024)


# The state walk and the record ---------------------------------------------------------------


def test_it_walks_waiting_queuing_generating_success(api, simulator):
    use_tier(simulator, "pro")  # fast polling needs the pro tier's 100 queries a second
    simulator.simulator.config.speed = 0.1
    task_id = api.create_task()
    first = api.record(task_id)
    assert first["state"] == "waiting"
    assert first["resultJson"] is None and first["costTime"] is None
    assert first["completeTime"] is None and first["failCode"] is None

    assert api.states(task_id) == ["waiting", "queuing", "generating", "success"]
    record = api.record(task_id)
    assert record["taskId"] == task_id and record["model"] == MODEL
    assert record["failCode"] is None and record["failMsg"] is None
    assert record["completeTime"] - record["createTime"] == record["costTime"] > 0
    assert abs(record["createTime"] / 1000 - time.time()) < 60
    assert len(result_urls(record)) == 1


def test_it_serves_images_of_the_documented_size_and_format(api, simulator):
    use_tier(simulator, "pro")
    cases = [(ratio, "1K", "png") for ratio in ASPECT_RATIOS]
    cases += [("3:2", "1K", "jpg"), ("9:16", "2K", "png"), ("2:3", "2K", "jpg")]
    cases += [("1:1", "4K", "png"), ("1:8", "4K", "jpg")]
    tasks = [
        (api.create_task(f"size {r} {s}", aspect_ratio=r, resolution=s, output_format=f), r, s, f)
        for r, s, f in cases
    ]
    for task_id, ratio, resolution, output_format in tasks:
        response = api.download(result_urls(api.wait(task_id))[0])
        image = image_of(response)
        assert image.size == image_size(ratio, resolution), (ratio, resolution)
        expected = ("PNG", "image/png") if output_format == "png" else ("JPEG", "image/jpeg")
        assert (image.format, response.headers["Content-Type"]) == expected
    assert image_size("auto", "1K") == (1024, 1024)
    assert image_size("21:9", "2K") == (3168, 1344)
    assert image_size("1:8", "4K") == (1536, 12288)


def test_it_draws_visibly_different_colourful_images_for_different_prompts(api):
    first = api.create_task("a banana on the moon")
    second = api.create_task("a lighthouse in a storm")
    images = [
        image_of(api.download(result_urls(api.wait(t))[0])).convert("RGB") for t in (first, second)
    ]
    difference = ImageStat.Stat(ImageChops.difference(*images)).mean
    assert sum(difference) / 3 > 20
    for image in images:
        assert ImageStat.Stat(image.convert("HSV")).mean[1] > 60  # saturated, not grey
        assert image.getcolors(maxcolors=1000) is None  # more than a flat box or two


# Render time -------------------------------------------------------------------------------


@pytest.mark.parametrize("simulator_config", [SimulatorConfig(speed=0.01, seed=2)])
def test_it_takes_the_documented_time_give_or_take_10_percent_by_default(fast_api):
    tasks = {
        resolution: [fast_api.create_task(resolution=resolution) for _ in range(3)]
        for resolution in ("1K", "2K", "4K")
    }
    for resolution, documented in (("1K", 15), ("2K", 38), ("4K", 63)):
        for record in finished(fast_api, tasks[resolution]):
            assert 0.9 * documented * 10 <= record["costTime"] <= 1.1 * documented * 10


@pytest.mark.parametrize(
    "simulator_config",
    # A median of 300 s at speed 0.001: 0.3 s.
    [SimulatorConfig(speed=0.001, durations={"1K": 300}, render_sigma=0.4, seed=4)],
)
def test_it_draws_lognormal_durations_around_the_configured_median(fast_api):
    started = time.monotonic()
    task_ids = [fast_api.create_task(f"spread {i}") for i in range(100)]
    # Look once the oldest tasks are about the median age, so that some have ended and others
    # have not, whatever the machine's speed.
    time.sleep(max(0.0, 0.3 - (time.monotonic() - started)))
    # One look at every task, newest first: whatever state it shows must agree with costTime.
    seen: list[tuple[str, str, int, int]] = []
    for task_id in reversed(task_ids):
        before = epoch_ms()
        state = fast_api.record(task_id)["state"]
        seen.append((task_id, state, before, epoch_ms()))
    records = {record["taskId"]: record for record in finished(fast_api, task_ids)}

    assert {record["state"] for record in records.values()} == {"success"}
    costs = [records[task_id]["costTime"] for task_id in task_ids]
    assert abs(statistics.median(costs) / 300 - 1) < 0.15
    assert 0.25 < statistics.stdev(math.log(cost) for cost in costs) < 0.6
    for task_id, state, before, after in seen:
        # costTime is the task's real duration: it ends at createTime + costTime (to the ms).
        record = records[task_id]
        end = record["createTime"] + record["costTime"]
        assert record["completeTime"] == end
        if state == "success":
            assert end <= after + 3, (state, end - before)
        else:
            assert end >= before - 3, (state, end - before)
    states = {state for _, state, _, _ in seen}
    assert "success" in states and states & {"waiting", "queuing", "generating"}


# A median of 100 s at speed 0.001 (0.1 s) without spread; a quarter of the tasks 3 times longer.
TAIL = {"speed": 0.001, "durations": {"1K": 100}, "tail_rate": 0.25, "tail_factor": 3, "seed": 5}


@pytest.mark.parametrize("simulator_config", [SimulatorConfig(**TAIL)])
def test_it_makes_some_tasks_take_tail_factor_times_longer(fast_api):
    def durations(api: Api) -> list[int]:
        task_ids = [api.create_task() for _ in range(80)]
        return [record["costTime"] for record in finished(api, task_ids)]

    costs = durations(fast_api)
    usual = [cost for cost in costs if cost < 200]
    tail = [cost for cost in costs if cost >= 200]
    assert 0.1 < len(tail) / len(costs) < 0.4
    assert all(90 <= cost <= 110 for cost in usual)
    assert all(270 <= cost <= 330 for cost in tail)

    # The same seed, the same run.
    server = start_in_thread(SimulatorConfig(**TAIL, **UNLIMITED))
    try:
        assert durations(Api(server)) == costs
    finally:
        server.shutdown()
        server.server_close()


# Idempotency, limits and credits -------------------------------------------------------------


def test_it_makes_one_task_and_one_charge_per_request_id(api, simulator):
    simulator.simulator.config.credits = 10
    first = api.create("once", request_id="gen-1")
    second = api.create("once", request_id="gen-1")
    assert_envelope(first, 200)
    assert_envelope(second, 200)
    task_id = first.json()["data"]["taskId"]
    assert second.json()["data"]["taskId"] == task_id
    other = api.create_task("twice", request_id="gen-2")
    assert other != task_id

    status = simulator.simulator.status()
    assert status["createTask"]["byRequestId"] == {"gen-1": 2, "gen-2": 1}
    assert status["tasksByRequestId"] == {"gen-1": [task_id], "gen-2": [other]}
    assert status["tasksCreated"] == 2
    assert status["credits"] == 8


def test_it_rate_limits_a_free_key_per_second(api, simulator):
    use_tier(simulator, "free", "free-key")
    api.key = "free-key"
    task_id = api.create_task("first")
    response = api.create("second in the same second")
    payload = assert_envelope(response, 429, "rate limit")
    data = payload["data"]
    assert data["retryAfter"] >= 1
    assert data | {"retryAfter": 0} == {
        "retryAfter": 0,
        "limit": 1,
        "tier": "free",
        "windowSeconds": 1,
    }
    assert response.headers["Retry-After"] == str(data["retryAfter"])

    # Queries have their own, separate windows: two a second on free.
    assert_envelope(api.query(task_id), 200)
    assert_envelope(api.query(task_id), 200)
    refused = assert_envelope(api.query(task_id), 429)["data"]
    assert (refused["limit"], refused["windowSeconds"]) == (2, 1)
    assert simulator.simulator.status()["tasksCreated"] == 1  # rejected, not queued


def test_it_rate_limits_queries_of_a_basic_key_at_20_a_second(api):
    task_id = api.create_task()
    for _ in range(20):
        assert_envelope(api.query(task_id), 200)
    data = assert_envelope(api.query(task_id), 429)["data"]
    assert (data["limit"], data["tier"], data["windowSeconds"]) == (20, "basic", 1)


def test_it_rate_limits_over_the_60_second_window(api, monkeypatch):
    monkeypatch.setitem(TIERS, "basic", Tier(100, 3, 100, 1000, 30))
    for _ in range(3):
        api.create_task()
    response = api.create()
    data = assert_envelope(response, 429)["data"]
    assert (data["limit"], data["windowSeconds"]) == (3, 60)
    assert 55 <= data["retryAfter"] <= 60
    assert response.headers["Retry-After"] == str(data["retryAfter"])


def test_it_adds_tiers_with_their_limits(api, simulator):
    config = SimulatorConfig.from_env(
        {
            "SIMULATOR_TIERS": "bench300:300/100/500, Tiny:2/3/4",
            "SIMULATOR_API_KEYS": "sim-key:tiny",
        }
    )
    assert config.extra_tiers == {
        "bench300": Tier(100, 6000, 500, 30_000, 300),
        "tiny": Tier(3, 180, 4, 240, 2),
    }
    simulator.simulator.config = config  # speed 1: tasks stay active for about 15 s
    first = api.create_task("one")
    api.create_task("two")
    assert_envelope(api.create("three"), 409, "active task limit exceeded")
    data = assert_envelope(api.create("four"), 429)["data"]
    assert (data["limit"], data["tier"], data["windowSeconds"]) == (3, "tiny", 1)
    for _ in range(4):
        assert_envelope(api.query(first), 200)
    data = assert_envelope(api.query(first), 429)["data"]
    assert (data["limit"], data["tier"], data["windowSeconds"]) == (4, "tiny", 1)

    with pytest.raises(ValueError, match="bench300"):
        SimulatorConfig(api_keys={"k": "gold"}, extra_tiers=config.extra_tiers)
    with pytest.raises(ValueError, match="SIMULATOR_TIERS"):
        SimulatorConfig.from_env({"SIMULATOR_TIERS": "bench:300/100"})


def test_it_refuses_beyond_the_active_task_limit_with_409(api, simulator):
    simulator.simulator.config.speed = 1.0  # tasks stay active for about 15 s
    first = api.create_task("task 0", request_id="id-0")
    for i in range(1, 5):
        api.create_task(f"task {i}")
    time.sleep(1.05)  # past the basic tier's five creates a second
    assert_envelope(api.create("one too many"), 409, "active task limit exceeded")
    # A repeat of an existing X-Request-ID is not a new task: never refused by 409.
    assert api.create_task("task 0", request_id="id-0") == first
    tasks = simulator.simulator.status()["tasks"]
    assert tasks["waiting"] + tasks["queuing"] + tasks["generating"] == 5


def test_it_answers_402_when_credits_run_out(api, simulator):
    simulator.simulator.config.credits = 3
    first = api.create_task("2K costs 2", resolution="2K", request_id="paid")
    assert_envelope(api.create("4K costs 4", resolution="4K"), 402, "insufficient credits")
    api.create_task("1K costs 1")
    assert_envelope(api.create("nothing left"), 402, "insufficient credits")
    assert api.create_task("2K costs 2", resolution="2K", request_id="paid") == first
    assert simulator.simulator.status()["credits"] == 0


def test_it_answers_404_for_an_unknown_task_or_another_keys_task(api, simulator):
    simulator.simulator.config.api_keys = {DEFAULT_API_KEY: "basic", "other-key": "basic"}
    task_id = api.create_task()
    assert_envelope(api.query("task_does_not_exist"), 404, "task not found")
    assert_envelope(api.query(task_id, key="other-key"), 404, "task not found")
    assert_envelope(api.query(None), 400, "taskId")
    assert_envelope(api.query(task_id), 200)


# Markers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "fail_code", "words"),
    [("[sim:fail]", "400", "content policy"), ("[SIM:Fail500]", "500", "internal error")],
)
def test_it_ends_a_task_in_fail_with_a_fail_marker(api, marker, fail_code, words):
    record = api.wait(api.create_task(f"please {marker} thanks"))
    assert record["state"] == "fail"
    assert record["failCode"] == fail_code
    assert words in record["failMsg"]
    assert record["resultJson"] is None
    assert record["costTime"] is None and record["completeTime"] is None


@pytest.mark.parametrize("code", [400, 401, 402, 409, 422, 500])
def test_it_answers_a_code_marker_every_time(api, simulator, code):
    for _ in range(2):
        payload = assert_envelope(api.create(f"[sim:{code}] refused", request_id="r"), code)
        assert len(payload["msg"]) > 5
    assert simulator.simulator.status()["tasksCreated"] == 0


def test_it_answers_500_for_the_first_n_calls_of_a_request_id(api, simulator):
    prompt = "flaky [sim:500=2]"
    assert_envelope(api.create(prompt, request_id="retry-me"), 500)
    assert_envelope(api.create(prompt, request_id="retry-me"), 500)
    task_id = api.create_task(prompt, request_id="retry-me")
    assert api.create_task(prompt, request_id="retry-me") == task_id
    # Counted per ID: another generation with the same prompt meets the fault afresh.
    assert_envelope(api.create(prompt, request_id="another"), 500)
    status = simulator.simulator.status()
    assert status["tasksByRequestId"] == {"retry-me": [task_id]}
    assert status["createTask"]["byRequestId"] == {"retry-me": 4, "another": 1}


def test_it_counts_a_marker_by_prompt_without_a_request_id(api):
    assert_envelope(api.create("no id [sim:500=1]"), 500)
    assert_envelope(api.create("no id [sim:500=1]"), 200)


def test_it_answers_429_with_the_wait_in_body_and_header(api):
    response = api.create("hurry [sim:429=1]", request_id="r")
    data = assert_envelope(response, 429, "rate limit")["data"]
    assert data["retryAfter"] == 1
    assert response.headers["Retry-After"] == "1"
    assert_envelope(api.create("hurry [sim:429=1]", request_id="r"), 200)


def test_it_answers_429_with_the_wait_only_in_a_header(api):
    response = api.create("hurry [sim:429-header=1]", request_id="r")
    assert assert_envelope(response, 429)["data"] is None
    assert response.headers["Retry-After"] == "1"
    assert_envelope(api.create("hurry [sim:429-header=1]", request_id="r"), 200)


def test_it_answers_429_with_the_wait_as_an_http_date(api):
    response = api.create("hurry [sim:429-date=1]", request_id="r")
    assert assert_envelope(response, 429)["data"] is None
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
    assert 0 <= (when - datetime.now(UTC)).total_seconds() <= 3
    assert_envelope(api.create("hurry [sim:429-date=1]", request_id="r"), 200)


def test_it_answers_409_for_the_first_n_calls(api, simulator):
    assert_envelope(api.create("busy [sim:409=1]", request_id="r"), 409, "active task limit")
    assert_envelope(api.create("busy [sim:409=1]", request_id="r"), 200)
    assert simulator.simulator.status()["tasksCreated"] == 1


def test_it_loses_a_task_with_query404(api):
    task_id = api.create_task("vanishing [sim:query404]")
    assert_envelope(api.query(task_id), 404, "task not found")


def test_it_answers_500_to_the_first_n_queries_with_query500(api):
    task_id = api.create_task("flaky polls [sim:query500=2]")
    assert_envelope(api.query(task_id), 500)
    assert_envelope(api.query(task_id), 500)
    assert api.wait(task_id)["state"] == "success"


def test_it_answers_an_html_page_to_create_with_broken(api):
    response = api.create("[sim:broken]")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()


def test_it_answers_malformed_json_to_query_with_broken_query(api):
    task_id = api.create_task("[sim:broken-query]")
    response = api.query(task_id)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)


def test_it_delays_a_task_with_slow_after_creating_it(api, simulator):
    with pytest.raises(requests.ReadTimeout):
        api.create("take your time [sim:slow=1]", request_id="slow", timeout=0.3)
    assert simulator.simulator.status()["tasksByRequestId"]["slow"]


def test_it_delays_every_answer_with_slow_seconds(api, simulator):
    simulator.simulator.config.slow_seconds = 1
    with pytest.raises(requests.ReadTimeout):
        api.create(timeout=0.3)


def test_it_serves_already_expired_urls_with_expired(api):
    record = api.wait(api.create_task("too late [sim:expired]"))
    assert record["state"] == "success"
    response = api.download(result_urls(record)[0])
    assert response.status_code == 403
    assert not response.headers["Content-Type"].startswith("image/")


def test_it_returns_two_different_images_with_multi(api):
    urls = result_urls(api.wait(api.create_task("two of them [sim:multi]")))
    assert len(set(urls)) == 2
    first, second = (image_of(api.download(url)).convert("RGB") for url in urls)
    assert ImageChops.difference(first, second).getbbox() is not None


def test_it_reports_an_unknown_state_while_queuing(api, simulator):
    use_tier(simulator, "pro")
    simulator.simulator.config.speed = 0.1
    states = api.states(api.create_task("[sim:unknown-state]"))
    assert states == ["waiting", "preparing", "generating", "success"]


# Result URLs -------------------------------------------------------------------------------


def test_it_refuses_a_result_url_after_result_ttl_or_with_a_bad_signature(api, simulator):
    simulator.simulator.config.result_ttl = 0.5
    url = result_urls(api.wait(api.create_task()))[0]
    tampered = url.replace("/0/", "/1/")
    assert api.download(tampered).status_code == 403
    assert api.download(simulator.base_url + "/files/nothing").status_code == 403
    assert image_of(api.download(url)).size == (1024, 1024)
    time.sleep(0.6)
    response = api.download(url)
    assert response.status_code == 403
    assert "expired" in response.text


# Server-wide faults and variants -----------------------------------------------------------


def test_it_answers_500_to_every_api_call_with_error_rate_1(api, simulator):
    simulator.simulator.config.error_rate = 1.0
    assert_envelope(api.create(), 500)
    assert_envelope(api.query("task_x"), 500)
    assert simulator.simulator.status()["answers"] == {"500": 2}


def test_it_fails_every_task_with_fail_rate_1(api, simulator):
    simulator.simulator.config.fail_rate = 1.0
    record = api.wait(api.create_task())
    assert record["state"] == "fail"
    assert record["failCode"] in ("400", "500") and record["failMsg"]


def test_it_makes_the_task_before_answering_500_with_error_rate(api, simulator):
    config = simulator.simulator.config
    config.error_rate = 1.0
    assert_envelope(api.create("answer lost", request_id="gen-1"), 500)
    [task_id] = simulator.simulator.status()["tasksByRequestId"]["gen-1"]
    config.error_rate = 0.0
    assert api.create_task("answer lost", request_id="gen-1") == task_id
    status = simulator.simulator.status()
    assert status["createTask"]["byRequestId"] == {"gen-1": 2}
    assert status["tasksCreated"] == 1
    assert status["faults"] == {"error": 1}


def test_it_answers_409_without_making_a_task_with_conflict_rate_1(api, simulator):
    first = api.create_task("made before", request_id="old")
    simulator.simulator.config.conflict_rate = 1.0
    assert_envelope(api.create("refused", request_id="new"), 409, "active task limit exceeded")
    # A repeat of an X-Request-ID that has its task is not a new task: never refused.
    assert api.create_task("made before", request_id="old") == first
    status = simulator.simulator.status()
    assert status["tasksByRequestId"] == {"old": [first]}
    assert status["faults"] == {"conflict": 1}


def test_it_answers_429_to_any_call_with_rate_limit_rate_1(api, simulator):
    task_id = api.create_task()
    simulator.simulator.config.rate_limit_rate = 1.0
    limits = []
    for response in (api.create("refused"), api.query(task_id)):
        data = assert_envelope(response, 429, "rate limit")["data"]
        assert (data["retryAfter"], data["tier"], data["windowSeconds"]) == (1, "basic", 1)
        assert response.headers["Retry-After"] == "1"
        limits.append(data["limit"])
    assert limits == [5, 20]
    status = simulator.simulator.status()
    assert status["tasksCreated"] == 1
    assert status["faults"] == {"rateLimit": 2}


def test_it_cuts_answers_off_after_making_the_task_with_broken_rate_1(api, simulator):
    config = simulator.simulator.config
    config.broken_rate = 1.0
    response = api.create("cut off", request_id="gen-1")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)
    [task_id] = simulator.simulator.status()["tasksByRequestId"]["gen-1"]
    response = api.query(task_id)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)
    config.broken_rate = 0.0
    assert api.create_task("cut off", request_id="gen-1") == task_id
    assert simulator.simulator.status()["faults"] == {"broken": 2}


def test_it_answers_late_after_making_the_task_with_slow_rate_1(api, simulator):
    config = simulator.simulator.config
    config.slow_rate, config.slow_answer_seconds = 1.0, 1.0
    with pytest.raises(requests.ReadTimeout):
        api.create("take your time", request_id="gen-1", timeout=0.3)
    [task_id] = simulator.simulator.status()["tasksByRequestId"]["gen-1"]
    config.slow_answer_seconds = 0.2
    started = time.monotonic()
    assert_envelope(api.query(task_id), 200)
    assert time.monotonic() - started >= 0.2
    config.slow_rate = 0.0
    assert api.create_task("take your time", request_id="gen-1") == task_id


def test_it_forgets_a_task_for_good_with_query_404_rate_1(api, simulator):
    config = simulator.simulator.config
    task_id = api.create_task("forgotten")
    config.query_404_rate = 1.0
    assert_envelope(api.query(task_id), 404, "task not found")
    config.query_404_rate = 0.0
    assert_envelope(api.query(task_id), 404, "task not found")
    assert api.wait(api.create_task("remembered"))["state"] == "success"
    assert simulator.simulator.status()["faults"] == {"query404": 1}


def test_it_hands_out_expired_result_urls_with_expired_rate_1(api, simulator):
    simulator.simulator.config.expired_rate = 1.0
    record = api.wait(api.create_task())
    assert record["state"] == "success"
    response = api.download(result_urls(record)[0])
    assert response.status_code == 403
    assert "expired" in response.text


@pytest.mark.parametrize(
    "simulator_config",
    [
        SimulatorConfig(
            speed=0.02,
            seed=9,
            error_rate=0.25,
            broken_rate=0.25,
            slow_rate=0.25,
            slow_answer_seconds=0.02,
            conflict_rate=0.2,
            rate_limit_rate=0.2,
            **UNLIMITED,
        )
    ],
)
def test_it_keeps_one_task_per_request_id_under_random_create_faults(api, simulator):
    """A client that retries each generation with its X-Request-ID until it reads a task ID."""
    task_ids: dict[str, str] = {}
    attempts: dict[str, int] = {}
    found_again = 0  # generations whose task was made by a try whose answer was lost
    for i in range(20):
        request_id = f"gen-{i}"
        for attempt in range(1, 50):
            made = request_id in simulator.simulator.status()["tasksByRequestId"]
            response = api.create(f"soak {i}", request_id=request_id)
            try:
                payload = response.json()
            except ValueError:
                continue  # cut off: the task may well have been made
            if payload["code"] == 200:
                task_ids[request_id], attempts[request_id] = payload["data"]["taskId"], attempt
                found_again += made
                break
    assert len(task_ids) == 20 and found_again > 0
    status = simulator.simulator.status()
    assert status["tasksByRequestId"] == {key: [value] for key, value in task_ids.items()}
    assert status["createTask"]["byRequestId"] == attempts
    assert set(status["faults"]) == {"error", "broken", "slow", "conflict", "rateLimit"}


def test_it_says_message_instead_of_msg_when_configured(api, simulator):
    simulator.simulator.config.message_key = "message"
    for response, code in ((api.create(resolution="8K"), 422), (api.create(), 200)):
        payload = response.json()
        assert response.status_code == payload["code"] == code
        assert set(payload) == {"code", "message", "data"}
    assert "resolution" in api.create(resolution="8K").json()["message"]


def test_it_sends_empty_fail_code_on_success_when_configured(api, simulator):
    simulator.simulator.config.empty_fail_code = True
    record = api.wait(api.create_task())
    assert record["state"] == "success"
    assert record["failCode"] == "" and record["failMsg"] == ""


# The state file ----------------------------------------------------------------------------


def test_it_carries_on_after_a_restart_with_a_state_file(tmp_path):
    path = tmp_path / "state.json"
    server = start_in_thread(SimulatorConfig(speed=0.02, seed=1, credits=20, state_file=path))
    api = Api(server)
    done = api.create_task("finished before the stop", request_id="gen-1")
    record = api.wait(done)
    url = result_urls(record)[0]
    assert image_of(api.download(url)).size == (1024, 1024)
    server.simulator.config.speed = 0.04
    # About 0.6 s, and 2.5 s for the 4K task: the first ends while the server is down.
    ends_while_down = api.create_task("ends while the server is down", request_id="gen-2")
    still_going = api.create_task("still going", resolution="4K", request_id="gen-3")
    assert api.record(ends_while_down)["state"] == "waiting"
    before = server.simulator.status()
    port = server.server_port
    assert not path.exists()  # written at the stop
    server.shutdown()
    server.server_close()
    assert path.exists()
    time.sleep(0.7)

    # The new server has a config of its own; the file's credits and tasks win.
    restarted = start_in_thread(SimulatorConfig(speed=0.02, state_file=path), port=port)
    try:
        api = Api(restarted)
        status = restarted.simulator.status()
        for name in ("createTask", "tasksByRequestId", "recordInfo", "answers", "downloads"):
            assert status[name] == before[name], name
        assert status["credits"] == 20 - 1 - 1 - 4
        assert status["tasks"] == {
            "waiting": 0,
            "queuing": 0,
            "generating": 1,
            "success": 2,
            "fail": 0,
        }

        assert api.record(done) == record
        assert api.record(ends_while_down)["state"] == "success"
        assert api.record(still_going)["state"] == "generating"
        assert image_of(api.download(url)).size == (1024, 1024)  # signed before the stop
        assert api.create_task("finished before the stop", request_id="gen-1") == done
        assert api.create_task("a new one") not in (done, ends_while_down, still_going)
    finally:
        restarted.shutdown()
        restarted.server_close()
    state = json.loads(path.read_text())
    assert len(state["tasks"]) == 4 and state["credits"] == 13


def test_it_refuses_a_damaged_state_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "tasks": [')
    with pytest.raises(ValueError, match="state file"):
        make_server(SimulatorConfig(state_file=path), port=0)
    path.write_text('{"version": 1}')
    with pytest.raises(ValueError, match="damaged"):
        make_server(SimulatorConfig(state_file=path), port=0)


# The command line --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_when_up(base_url: str, process: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        try:
            return requests.get(base_url + "/_simulator/status", timeout=1).json()
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"it did not start: {process.communicate()}") from None
            time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_it_runs_with_python_m_simulator_until_stopped(tmp_path, stop):
    port, path = free_port(), tmp_path / "state.json"
    command = [sys.executable, "-m", "simulator", "--port", str(port), "--speed", "0.02"]
    command += ["--api-keys", "key-1:pro,key-2", "--state-file", str(path)]
    # Options win over the environment, which wins over the defaults.
    env = os.environ | {"SIMULATOR_SPEED": "5", "SIMULATOR_CREDITS": "7"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        assert status_when_up(base_url, process)["credits"] == 7
        response = requests.post(
            base_url + CREATE,
            json={"model": MODEL, "input": {"prompt": "from the command line"}},
            headers={"Authorization": "Bearer key-1"},
            timeout=5,
        )
        task_id = assert_envelope(response, 200)["data"]["taskId"]
        stopped_at = time.monotonic()
        process.send_signal(stop)
        out, err = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert time.monotonic() - stopped_at < 3
    assert f"listening on {base_url}" in out
    assert "key-1 (pro), key-2 (basic)" in out and "Speed x0.02" in out
    assert task_id in path.read_text()


def run_manage_py(*args: str, debug: bool) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DEBUG": "1" if debug else "0"}
    command = [sys.executable, "manage.py", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_it_is_a_manage_py_command_in_development_only():
    production = run_manage_py("help", debug=False)
    assert production.returncode == 0, production.stderr
    assert "migrate" in production.stdout and "simulator" not in production.stdout
    development = run_manage_py("simulator", "--help", debug=True)
    assert development.returncode == 0, development.stderr
    assert "--state-file" in development.stdout and "--tiers" in development.stdout


# Status, unknown paths and concurrency -----------------------------------------------------


def test_it_counts_everything_on_the_status_endpoint_and_resets(api, simulator):
    task_id = api.create_task(request_id="counted")
    assert_envelope(api.create(key=""), 401)
    api.download(result_urls(api.wait(task_id))[0])

    response = requests.get(simulator.base_url + "/_simulator/status", timeout=5)
    status = response.json()
    assert status == simulator.simulator.status()
    assert status["createTask"] == {"calls": 2, "byRequestId": {"counted": 1}}
    assert status["tasksByRequestId"] == {"counted": [task_id]}
    assert status["tasksCreated"] == 1
    assert status["recordInfo"]["calls"] >= 1
    assert status["answers"] == {"200": 1 + status["recordInfo"]["calls"], "401": 1}
    assert status["tasks"] == {"waiting": 0, "queuing": 0, "generating": 0, "success": 1, "fail": 0}
    assert status["credits"] is None
    assert status["downloads"] == 1

    reset = requests.post(simulator.base_url + "/_simulator/reset", timeout=5).json()
    assert reset["tasksCreated"] == 0 and reset["createTask"]["calls"] == 0
    assert_envelope(api.query(task_id), 404)


def test_it_answers_404_in_the_envelope_for_an_unknown_path(api, simulator):
    assert_envelope(requests.get(simulator.base_url + "/nowhere", timeout=5), 404, "not found")
    response = api.session.get(simulator.base_url + "/api/v1/jobs/other", headers=api.headers(None))
    assert_envelope(response, 404, "not found")
    response = api.session.get(simulator.base_url + CREATE, headers=api.headers(None))
    assert_envelope(response, 405)


def test_it_serves_concurrent_clients(simulator):
    use_tier(simulator, "pro")

    def one_generation(i: int) -> tuple[str, tuple[int, int]]:
        client = Api(simulator)
        task_id = client.create_task(f"concurrent {i}", aspect_ratio="16:9")
        record = client.wait(task_id, interval=0.1)
        return task_id, image_of(client.download(result_urls(record)[0])).size

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one_generation, range(8)))
    assert len({task_id for task_id, _ in results}) == 8
    assert {size for _, size in results} == {(1376, 768)}
    status = simulator.simulator.status()
    assert status["tasksCreated"] == 8 and status["downloads"] == 8
    assert set(status["answers"]) == {"200"}


def test_it_reads_its_config_from_the_environment():
    config = SimulatorConfig.from_env(
        {
            "SIMULATOR_API_KEYS": "sim-key:basic, other:FREE, bare",
            "SIMULATOR_SPEED": "0.5",
            "SIMULATOR_CREDITS": "12",
            "SIMULATOR_FAIL_RATE": "0.1",
            "SIMULATOR_ERROR_RATE": "0.2",
            "SIMULATOR_SLOW_SECONDS": "0.3",
            "SIMULATOR_RESULT_TTL": "60",
            "SIMULATOR_MESSAGE_KEY": "message",
            "SIMULATOR_EMPTY_FAIL_CODE": "true",
            "SIMULATOR_SEED": "7",
        }
    )
    assert config == SimulatorConfig(
        api_keys={"sim-key": "basic", "other": "free", "bare": "basic"},
        speed=0.5,
        credits=12,
        fail_rate=0.1,
        error_rate=0.2,
        slow_seconds=0.3,
        result_ttl=60.0,
        message_key="message",
        empty_fail_code=True,
        seed=7,
    )
    assert SimulatorConfig.from_env({}) == SimulatorConfig()
    with pytest.raises(ValueError, match="SIMULATOR_SPEED"):
        SimulatorConfig.from_env({"SIMULATOR_SPEED": "fast"})
    with pytest.raises(ValueError, match="tier"):
        SimulatorConfig.from_env({"SIMULATOR_API_KEYS": "k:gold"})


def test_it_reads_the_render_time_from_the_environment():
    config = SimulatorConfig.from_env(
        {
            "SIMULATOR_DURATIONS": "1k=12, 4K=90",
            "SIMULATOR_RENDER_SIGMA": "0.35",
            "SIMULATOR_TAIL_RATE": "0.05",
            "SIMULATOR_TAIL_FACTOR": "3",
        }
    )
    assert config.durations == {"1K": 12.0, "2K": 38.0, "4K": 90.0}
    assert (config.render_sigma, config.tail_rate, config.tail_factor) == (0.35, 0.05, 3.0)
    assert SimulatorConfig().durations == {"1K": 15.0, "2K": 38.0, "4K": 63.0}
    with pytest.raises(ValueError, match="SIMULATOR_DURATIONS"):
        SimulatorConfig.from_env({"SIMULATOR_DURATIONS": "8K=100"})
    with pytest.raises(ValueError, match="tail_rate"):
        SimulatorConfig(tail_rate=1.5)


def test_it_reads_the_fault_rates_from_the_environment():
    config = SimulatorConfig.from_env(
        {
            "SIMULATOR_CONFLICT_RATE": "0.01",
            "SIMULATOR_RATE_LIMIT_RATE": "0.02",
            "SIMULATOR_BROKEN_RATE": "0.03",
            "SIMULATOR_SLOW_RATE": "0.04",
            "SIMULATOR_SLOW_ANSWER_SECONDS": "45",
            "SIMULATOR_QUERY_404_RATE": "0.05",
            "SIMULATOR_EXPIRED_RATE": "0.06",
            "SIMULATOR_STATE_FILE": "/tmp/simulator-state.json",
        }
    )
    assert config == SimulatorConfig(
        conflict_rate=0.01,
        rate_limit_rate=0.02,
        broken_rate=0.03,
        slow_rate=0.04,
        slow_answer_seconds=45.0,
        query_404_rate=0.05,
        expired_rate=0.06,
        state_file=Path("/tmp/simulator-state.json"),
    )
    with pytest.raises(ValueError, match="query_404_rate"):
        SimulatorConfig(query_404_rate=-0.1)
