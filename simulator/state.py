"""The provider's state and rules, independent of HTTP: tasks, limits, de-duplication, counters.

`Simulator.handle` takes a `Request` and gives a `Reply`; `simulator.server` puts it on the wire.
It speaks docs/provider-contract.md: Bearer keys, validation, the state walk, X-Request-ID
de-duplication, per-tier rate and active-task limits, credits, and signed result URLs that expire.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import hmac
import itertools
import json
import math
import os
import random
import secrets
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simulator.config import (
    GENERATING_SECONDS,
    JITTER,
    QUEUING_SECONDS,
    RESOLUTIONS,
    WAITING_SECONDS,
    SimulatorConfig,
    parse_markers,
)
from simulator.images import (
    ASPECT_RATIOS,
    IMAGE_CACHE_BYTES,
    ImageCache,
    image_size,
    render_image,
)

MODEL = "nano-banana-2-text-to-image"
PROMPT_MAX_LENGTH = 20_000
OUTPUT_FORMATS = ("png", "jpg")
CREDIT_COST = {"1K": 1, "2K": 2, "4K": 4}

STATE_VERSION = 1  # of the state file

PENDING_STATES = ("waiting", "queuing", "generating")
STATES = (*PENDING_STATES, "success", "fail")

# Markers that make createTask answer an error code, checked in this order; each takes an
# optional `=N` (only the first N calls) and otherwise applies to every call.
CREATE_ERROR_MARKERS = (
    "401", "402", "400", "422", "409", "429", "429-header", "429-date", "500", "455", "501", "505",
)  # fmt: skip
CREATE_ERROR_MESSAGES = {
    400: "invalid request parameters",
    401: "API key is missing or invalid",
    402: "insufficient credits",
    409: "active task limit exceeded",
    422: "parameter validation failed: the prompt was rejected",
    429: "rate limit exceeded",
    500: "internal server error",
    # The family's own codes beyond the spec.
    455: "service unavailable: scheduled maintenance",
    501: "generation failed",
    505: "feature disabled",
}
CONTENT_POLICY_MESSAGE = (
    "The prompt or the generated image was flagged by the content policy. Please revise it."
)
BROKEN_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body>"
    b"<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)


def _marker_count(value: str | None) -> float:
    """How many calls a counted marker applies to: all of them when it has no number."""
    if value is None:
        return math.inf
    try:
        return max(0, int(value))
    except ValueError:
        return 0


def _marker_seconds(value: str | None) -> float:
    try:
        return min(max(0.0, float(value or 0)), 600.0)
    except ValueError:
        return 0.0


def _epoch_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class _Task:
    task_id: str
    api_key: str
    request_id: str | None
    param: str
    prompt: str
    markers: dict[str, str | None]
    aspect_ratio: str
    resolution: str
    output_format: str
    fail: tuple[str, str] | None  # (failCode, failMsg) when the task is to end in fail
    started: float  # time.monotonic() at creation
    create_time: int  # epoch ms
    phase_ends: tuple[float, float, float]  # seconds after creation: waiting, queuing, generating
    expired: bool = False  # its result URLs have expired before they are handed out
    queries: int = 0
    forgotten: bool = False  # recordInfo answers 404 for it

    def to_state(self, clock_offset: float) -> dict[str, Any]:
        """The task for the state file, its start as wall-clock time (monotonic + offset)."""
        return dataclasses.asdict(self) | {"started": self.started + clock_offset}

    @classmethod
    def from_state(cls, data: dict[str, Any], clock_offset: float) -> _Task:
        fail, (waiting, queuing, generating) = data["fail"], data["phase_ends"]
        fields = {
            "started": data["started"] - clock_offset,
            "fail": (fail[0], fail[1]) if fail else None,
            "phase_ends": (waiting, queuing, generating),
        }
        return cls(**data | fields)

    def state(self, now: float) -> str:
        elapsed = now - self.started
        for state, end in zip(PENDING_STATES, self.phase_ends, strict=True):
            if elapsed < end:
                return state
        return "fail" if self.fail else "success"

    @property
    def duration_ms(self) -> int:
        return round(self.phase_ends[-1] * 1000)

    @property
    def result_count(self) -> int:
        if "multi" not in self.markers:
            return 1
        value = self.markers["multi"]
        return min(8, max(1, int(value))) if value and value.isdigit() else 2


class Simulator:
    """The provider's state and logic, independent of HTTP. Thread-safe behind one lock."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        # Where result URLs point when a request carries no Host header; set by the server.
        self.base_url = ""
        self._lock = threading.Lock()
        self._random = random.Random(config.seed)
        # Result URLs are signed with a secret of this run (kept in the state file, if any), so
        # they cannot be guessed.
        self._secret = secrets.token_bytes(32)
        self._images = ImageCache(IMAGE_CACHE_BYTES)
        self._clear()
        if config.state_file is not None and os.path.exists(config.state_file):
            self.load_state(config.state_file)

    def _clear(self) -> None:
        self._tasks: dict[str, _Task] = {}
        self._tasks_by_request_id: dict[tuple[str, str], _Task] = {}
        self._active: dict[str, list[_Task]] = {}
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._marker_calls: dict[tuple[str, str, str], int] = {}
        self._create_calls = 0
        self._create_calls_by_request_id: dict[str, int] = {}
        self._task_ids_by_request_id: dict[str, list[str]] = {}
        self._query_calls = 0
        self._answers: dict[str, int] = {}
        self._downloads = 0
        self._faults: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every task and counter; the config (and so the credit balance) stays."""
        with self._lock:
            self._clear()
        self._images.clear()

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            states = dict.fromkeys(STATES, 0)
            for task in self._tasks.values():
                states[task.state(now)] += 1
            return {
                "createTask": {
                    "calls": self._create_calls,
                    "byRequestId": dict(self._create_calls_by_request_id),
                },
                "tasksByRequestId": {
                    key: list(ids) for key, ids in self._task_ids_by_request_id.items()
                },
                "tasksCreated": len(self._tasks),
                "recordInfo": {"calls": self._query_calls},
                "answers": dict(self._answers),
                "tasks": states,
                "credits": self.config.credits,
                "downloads": self._downloads,
                "faults": dict(self._faults),
            }

    # The state file ---------------------------------------------------------------------------

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Write the tasks, request-ID maps, counters, credits and URL secret to `path`, whole or
        not at all: into a temporary file beside it, then renamed over it."""
        with self._lock:
            data = _dumps(self._state())
        directory = os.path.dirname(os.path.abspath(path))
        fd, temporary = tempfile.mkstemp(prefix=".simulator-state-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Carry on from a state file written by `save_state`, replacing every task and count."""
        try:
            with open(path, encoding="utf-8") as file:
                state = json.load(file)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the state file {os.fspath(path)}: {e}") from e
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{os.fspath(path)} is not a state file of this simulator")
        try:
            with self._lock:
                self._restore(state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"the state file {os.fspath(path)} is damaged: {e!r}") from e
        self._images.clear()

    def _state(self) -> dict[str, Any]:
        # Monotonic time means nothing to the next process: the file holds wall-clock times, so
        # that a task goes on ageing while the server is down.
        clock_offset = time.time() - time.monotonic()
        return {
            "version": STATE_VERSION,
            "savedAt": _epoch_ms(),
            "secret": self._secret.hex(),
            "credits": self.config.credits,
            "tasks": [task.to_state(clock_offset) for task in self._tasks.values()],
            "requestIds": [
                [api_key, request_id, task.task_id]
                for (api_key, request_id), task in self._tasks_by_request_id.items()
            ],
            "markerCalls": [[*identity, calls] for identity, calls in self._marker_calls.items()],
            "createCalls": self._create_calls,
            "createCallsByRequestId": self._create_calls_by_request_id,
            "taskIdsByRequestId": self._task_ids_by_request_id,
            "queryCalls": self._query_calls,
            "answers": self._answers,
            "downloads": self._downloads,
            "faults": self._faults,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        clock_offset = time.time() - time.monotonic()
        self._clear()
        self._secret = bytes.fromhex(state["secret"])
        self.config.credits = state["credits"]
        for data in state["tasks"]:
            task = _Task.from_state(data, clock_offset)
            self._tasks[task.task_id] = task
            self._active.setdefault(task.api_key, []).append(task)
        for api_key, request_id, task_id in state["requestIds"]:
            self._tasks_by_request_id[api_key, request_id] = self._tasks[task_id]
        for api_key, kind, value, calls in state["markerCalls"]:
            self._marker_calls[api_key, kind, value] = calls
        self._create_calls = state["createCalls"]
        self._create_calls_by_request_id = dict(state["createCallsByRequestId"])
        self._task_ids_by_request_id = {
            key: list(ids) for key, ids in state["taskIdsByRequestId"].items()
        }
        self._query_calls = state["queryCalls"]
        self._answers = dict(state["answers"])
        self._downloads = state["downloads"]
        self._faults = dict(state["faults"])

    # HTTP-independent entry point -------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        path = request.path
        if path == "/_simulator/status" and request.method == "GET":
            return self._json(200, self.status())
        if path == "/_simulator/reset" and request.method == "POST":
            self.reset()
            return self._json(200, self.status())
        if path.startswith("/files/") and request.method == "GET":
            return self._download(path)
        if not path.startswith("/api/v1/"):
            return self._envelope(404, "not found")
        with self._lock:
            reply = self._answer_fault(self._api(request))
            self._answers[str(reply.status)] = self._answers.get(str(reply.status), 0) + 1
        reply.delay += self.config.slow_seconds
        return reply

    def error(self, code: int, message: str) -> Reply:
        """An error answer in the API's envelope, for failures found before `handle`."""
        return self._envelope(code, message)

    def internal_error(self) -> Reply:
        return self._envelope(500, "internal server error")

    # The API, always called with the lock held ------------------------------------------------

    def _api(self, request: Request) -> Reply:
        routes = {
            "/api/v1/jobs/createTask": ("POST", self._create_task),
            "/api/v1/jobs/recordInfo": ("GET", self._record_info),
        }
        route = routes.get(request.path)
        if route is not None and route[0] == request.method:
            return route[1](request)
        _, refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        if route is None:
            return self._envelope(404, "not found")
        return self._envelope(405, f"method {request.method} not allowed")

    def _answer_fault(self, reply: Reply) -> Reply:
        """The server-wide faults of an answer: 500, cut off, late.

        They strike once the call has been carried out, as when an answer is lost on its way
        back: a createTask answered so has made its task, and a retry with the same X-Request-ID
        finds it.
        """
        config = self.config
        if self._chance(config.error_rate, "error"):
            reply = self._envelope(500, "internal server error", delay=reply.delay)
        elif self._chance(config.broken_rate, "broken"):
            reply = self._cut_off(reply.delay)
        if self._chance(config.slow_rate, "slow"):
            reply.delay += config.slow_answer_seconds
        return reply

    def _chance(self, rate: float, fault: str | None = None) -> bool:
        """True for about `rate` of the calls, from the seeded generator; no draw at rate 0, so
        a fault switched off leaves every other draw of a seeded run as it was. The faults that
        strike are counted for the status."""
        if rate <= 0 or self._random.random() >= rate:
            return False
        if fault is not None:
            self._faults[fault] = self._faults.get(fault, 0) + 1
        return True

    def _authorize(self, request: Request) -> tuple[str, Reply | None]:
        scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return "", self._envelope(401, "API key is missing")
        if key not in self.config.api_keys:
            return "", self._envelope(401, "API key is invalid")
        return key, None

    def _rate_limited(self, api_key: str, kind: str) -> Reply | None:
        """Count this call in the key's sliding windows, or refuse it with 429 (not counted)."""
        tier_name = self.config.api_keys[api_key]
        now = time.monotonic()
        calls = self._windows.setdefault((api_key, kind), deque())
        while calls and calls[0] <= now - 60:
            calls.popleft()
        limits = self.config.tier(tier_name).limits(kind)
        for window, limit in limits:
            in_window = [t for t in calls if t > now - window] if window < 60 else list(calls)
            if len(in_window) >= limit:
                # The call may go once enough of the calls in the window have left it.
                leaves_at = in_window[len(in_window) - limit] + window
                return self._too_many(tier_name, limit, window, max(1, math.ceil(leaves_at - now)))
        if self._chance(self.config.rate_limit_rate, "rateLimit"):
            _, per_second = limits[-1]
            return self._too_many(tier_name, per_second, 1, 1)
        calls.append(now)
        return None

    def _too_many(self, tier_name: str, limit: int, window: int, retry_after: int) -> Reply:
        data = {
            "retryAfter": retry_after,
            "limit": limit,
            "tier": tier_name,
            "windowSeconds": window,
        }
        return self._envelope(
            429, "rate limit exceeded", data, headers={"Retry-After": str(retry_after)}
        )

    def _create_task(self, request: Request) -> Reply:
        self._create_calls += 1
        request_id = request.headers.get("X-Request-ID", "").strip() or None
        if request_id:
            by_id = self._create_calls_by_request_id
            by_id[request_id] = by_id.get(request_id, 0) + 1
        api_key, refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        refusal = self._rate_limited(api_key, "create")
        if refusal is not None:
            return refusal

        body, refusal = self._parse_create_body(request.body)
        if refusal is not None:
            return refusal
        task_input = body["input"]
        prompt: str = task_input["prompt"]
        markers = parse_markers(prompt)
        delay = _marker_seconds(markers.get("slow"))
        if "broken" in markers:
            return Reply(200, BROKEN_PAGE, "text/html", delay=delay)
        refusal = self._create_marker_error(api_key, request_id, prompt, markers)
        if refusal is not None:
            refusal.delay = delay
            return refusal

        if request_id and (api_key, request_id) in self._tasks_by_request_id:
            # The same key and X-Request-ID again: the task made the first time, no new charge.
            task = self._tasks_by_request_id[api_key, request_id]
            return self._envelope(200, "success", {"taskId": task.task_id}, delay=delay)

        tier = self.config.tier(self.config.api_keys[api_key])
        now = time.monotonic()
        active = [t for t in self._active.get(api_key, []) if t.state(now) in PENDING_STATES]
        self._active[api_key] = active
        if len(active) >= tier.active_tasks or self._chance(self.config.conflict_rate, "conflict"):
            return self._envelope(409, "active task limit exceeded", delay=delay)
        resolution = task_input.get("resolution") or "1K"
        cost = CREDIT_COST[resolution]
        if self.config.credits is not None:
            if self.config.credits < cost:
                return self._envelope(402, "insufficient credits", delay=delay)
            self.config.credits -= cost

        task = self._new_task(api_key, request_id, body, markers, now)
        active.append(task)
        return self._envelope(200, "success", {"taskId": task.task_id}, delay=delay)

    def _parse_create_body(self, raw: bytes) -> tuple[dict[str, Any], Reply | None]:
        try:
            body = json.loads(raw)
        except ValueError:
            return {}, self._envelope(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return {}, self._envelope(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            return {}, self._envelope(400, "model is required and must be a string")
        task_input = body.get("input")
        if not isinstance(task_input, dict):
            return {}, self._envelope(400, "input is required and must be an object")
        prompt = task_input.get("prompt")
        if not isinstance(prompt, str):
            return {}, self._envelope(400, "input.prompt is required and must be a string")
        if model != MODEL:
            return {}, self._envelope(422, f"model is not supported: {model!r}; use {MODEL}")
        if not 1 <= len(prompt) <= PROMPT_MAX_LENGTH:
            return {}, self._envelope(
                422,
                f"input.prompt must be 1 to {PROMPT_MAX_LENGTH} characters long, got {len(prompt)}",
            )
        for name, allowed in (
            ("aspect_ratio", ASPECT_RATIOS),
            ("resolution", RESOLUTIONS),
            ("output_format", OUTPUT_FORMATS),
        ):
            value = task_input.get(name)
            if value is not None and value not in allowed:
                return {}, self._envelope(
                    422, f"input.{name} must be one of {', '.join(allowed)}; got {value!r}"
                )
        return body, None

    def _create_marker_error(
        self, api_key: str, request_id: str | None, prompt: str, markers: dict[str, str | None]
    ) -> Reply | None:
        counted = [name for name in CREATE_ERROR_MARKERS if name in markers]
        if not counted:
            return None
        # Calls are counted per X-Request-ID, so a client retrying with the same ID sees the
        # fault end; without an ID the prompt stands in for it.
        identity = (api_key, "id", request_id) if request_id else (api_key, "prompt", prompt)
        call = self._marker_calls[identity] = self._marker_calls.get(identity, 0) + 1
        for name in counted:
            if call > _marker_count(markers[name]):
                continue
            code = int(name[:3])
            if name == "429":
                tier_name = self.config.api_keys[api_key]
                limit = self.config.tier(tier_name).create_per_second
                return self._too_many(tier_name, limit, 1, 1)
            if name == "429-header":
                return self._envelope(429, "rate limit exceeded", headers={"Retry-After": "1"})
            if name == "429-date":
                # An HTTP date has one-second precision: aim at the next whole second and one.
                when = email.utils.formatdate(math.ceil(time.time()) + 1, usegmt=True)
                return self._envelope(429, "rate limit exceeded", headers={"Retry-After": when})
            return self._envelope(code, CREATE_ERROR_MESSAGES[code])
        return None

    def _new_task(
        self,
        api_key: str,
        request_id: str | None,
        body: dict[str, Any],
        markers: dict[str, str | None],
        now: float,
    ) -> _Task:
        task_input = body["input"]
        resolution = task_input.get("resolution") or "1K"
        ends = self._phase_ends(resolution)
        fail: tuple[str, str] | None = None
        if "fail500" in markers:
            fail = ("500", "internal error")
        elif "fail" in markers:
            fail = ("400", CONTENT_POLICY_MESSAGE)
        elif self._chance(self.config.fail_rate, "fail"):
            fail = self._random.choice((("400", CONTENT_POLICY_MESSAGE), ("500", "internal error")))
        expired = "expired" in markers or (
            fail is None and self._chance(self.config.expired_rate, "expired")
        )
        task = _Task(
            task_id=f"task_{uuid.uuid4().hex}",
            api_key=api_key,
            request_id=request_id,
            param=json.dumps(body, ensure_ascii=False),
            prompt=task_input["prompt"],
            markers=markers,
            aspect_ratio=task_input.get("aspect_ratio") or "auto",
            resolution=resolution,
            output_format=task_input.get("output_format") or "png",
            fail=fail,
            started=now,
            create_time=_epoch_ms(),
            phase_ends=ends,
            expired=expired,
        )
        self._tasks[task.task_id] = task
        if request_id:
            self._tasks_by_request_id[api_key, request_id] = task
            self._task_ids_by_request_id.setdefault(request_id, []).append(task.task_id)
        return task

    def _phase_ends(self, resolution: str) -> tuple[float, float, float]:
        """When waiting, queuing and generating end, in seconds after creation."""
        config = self.config
        phases = (WAITING_SECONDS, QUEUING_SECONDS, GENERATING_SECONDS[resolution])
        # Each state takes its share of the total that the documented seconds give it.
        shares = [seconds / sum(phases) for seconds in phases]
        median = config.durations[resolution] * config.speed
        if config.render_sigma > 0:
            total = median * self._random.lognormvariate(0.0, config.render_sigma)
            seconds = [share * total for share in shares]
        else:
            seconds = [
                share * median * self._random.uniform(1 - JITTER, 1 + JITTER) for share in shares
            ]
        if self._chance(config.tail_rate):
            seconds = [s * config.tail_factor for s in seconds]
        waiting, queuing, generating = itertools.accumulate(seconds)
        return waiting, queuing, generating

    def _record_info(self, request: Request) -> Reply:
        self._query_calls += 1
        api_key, refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        refusal = self._rate_limited(api_key, "query")
        if refusal is not None:
            return refusal
        task_id = (request.query.get("taskId") or [""])[0].strip()
        if not task_id:
            return self._envelope(400, "taskId is required")
        task = self._tasks.get(task_id)
        if task is None or task.api_key != api_key:
            return self._envelope(404, "task not found")
        task.queries += 1
        if not task.forgotten and self._chance(self.config.query_404_rate, "query404"):
            task.forgotten = True  # from now on, as if the provider had lost it
        markers = task.markers
        delay = _marker_seconds(markers.get("slow"))
        if "query404" in markers or task.forgotten:
            return self._envelope(404, "task not found", delay=delay)
        if task.queries <= _marker_count(markers.get("query500", "0")):
            return self._envelope(500, "internal server error", delay=delay)
        if "broken-query" in markers:
            return self._cut_off(delay)
        host = request.headers.get("Host", "")
        return self._envelope(200, "success", self._record(task, host), delay=delay)

    def _record(self, task: _Task, host: str) -> dict[str, Any]:
        state = task.state(time.monotonic())
        reported = state
        if state == "queuing" and "unknown-state" in task.markers:
            reported = "preparing"
        empty = "" if self.config.empty_fail_code else None
        complete_time = task.create_time + task.duration_ms
        # The contract: a failed task has resultJson, costTime and completeTime null.
        succeeded = state == "success"
        record: dict[str, Any] = {
            "taskId": task.task_id,
            "model": MODEL,
            "state": reported,
            "param": task.param,
            "resultJson": None,
            "failCode": None,
            "failMsg": None,
            "costTime": task.duration_ms if succeeded else None,
            "completeTime": complete_time if succeeded else None,
            "createTime": task.create_time,
        }
        if succeeded:
            # The expiry counts from completion in real time: result_ttl is not scaled by speed.
            if task.expired:
                expires = complete_time
            else:
                expires = complete_time + round(self.config.result_ttl * 1000)
            urls = [self._result_url(task, i, expires, host) for i in range(task.result_count)]
            record.update(
                resultJson=json.dumps({"resultUrls": urls}), failCode=empty, failMsg=empty
            )
        elif state == "fail" and task.fail:
            record.update(failCode=task.fail[0], failMsg=task.fail[1])
        return record

    # Result files ------------------------------------------------------------------------------

    def _signature(self, task_id: str, index: int, expires: int) -> str:
        message = f"{task_id}/{index}/{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def _result_url(self, task: _Task, index: int, expires: int, host: str) -> str:
        # The Host the client used, so the URL works whatever address the server is bound to.
        origin = f"http://{host}" if host else self.base_url
        signature = self._signature(task.task_id, index, expires)
        name = f"{signature}.{task.output_format}"
        return f"{origin}/files/{task.task_id}/{index}/{expires}/{name}"

    def _download(self, path: str) -> Reply:
        parts = path.split("/")  # "", "files", task_id, index, expires, "signature.ext"
        signature = parts[-1].partition(".")[0] if len(parts) == 6 else ""
        try:
            task_id, index, expires = parts[2], int(parts[3]), int(parts[4])
        except (IndexError, ValueError):
            return self._file_error(403, "AccessDenied", "Signature does not match.")
        expected = self._signature(task_id, index, expires)
        if not hmac.compare_digest(signature, expected):
            return self._file_error(403, "AccessDenied", "Signature does not match.")
        if _epoch_ms() >= expires:
            return self._file_error(403, "AccessDenied", "Request has expired.")
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or index >= task.result_count:
                return self._file_error(404, "NoSuchKey", "The specified key does not exist.")
        # Drawn outside the lock: other clients' API calls must not wait for an encoder.
        data = self._images.get((task_id, index))
        if data is None:
            width, height = image_size(task.aspect_ratio, task.resolution)
            data = render_image(
                task.prompt, width, height, task.output_format, variant=f"{task.task_id}:{index}"
            )
            self._images.put((task_id, index), data)
        with self._lock:
            self._downloads += 1
        content_type = "image/jpeg" if task.output_format == "jpg" else "image/png"
        return Reply(200, data, content_type, {"Cache-Control": "private, max-age=86400"})

    @staticmethod
    def _file_error(status: int, code: str, message: str) -> Reply:
        # What an object store answers: XML, never an image.
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return Reply(status, body.encode(), "application/xml")

    # Answers ----------------------------------------------------------------------------------

    def _envelope(
        self,
        code: int,
        message: str,
        data: Any = None,
        headers: dict[str, str] | None = None,
        *,
        delay: float = 0.0,
    ) -> Reply:
        body = {"code": code, self.config.message_key: message, "data": data}
        return Reply(code, _dumps(body), headers=headers or {}, delay=delay)

    def _cut_off(self, delay: float = 0.0) -> Reply:
        """An answer cut off mid-JSON with HTTP 200, as a dropped proxy connection leaves it."""
        body = f'{{"code": 200, "{self.config.message_key}": "success", "data": {{"taskId'
        return Reply(200, body.encode(), delay=delay)

    @staticmethod
    def _json(status: int, payload: Any) -> Reply:
        return Reply(status, _dumps(payload))


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()
