"""Client for the Nano Banana 2 text-to-image jobs API (see docs/provider-contract.md).

Two calls: `create_task` and `get_task`. Every error of the contract is its own exception class,
each carrying the provider's message, so callers decide with `except` clauses rather than by
comparing numbers. The client knows nothing of Django models; it takes plain values and returns
a small `TaskRecord`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

MODEL = "nano-banana-2-text-to-image"
ASPECT_RATIOS = (
    "auto", "1:1", "1:4", "1:8", "2:3", "3:2", "3:4", "4:1",
    "4:3", "4:5", "5:4", "8:1", "9:16", "16:9", "21:9",
)  # fmt: skip
RESOLUTIONS = ("1K", "2K", "4K")
OUTPUT_FORMATS = ("png", "jpg")
PROMPT_MAX_LENGTH = 20_000

PENDING_STATES = ("waiting", "queuing", "generating")
FINAL_STATES = ("success", "fail")

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """Any failure to get a usable answer from the provider."""

    code: int | None = None

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ProviderError):
    """400: invalid request parameters. Never retried."""

    code = 400


class Unauthorized(ProviderError):
    """401: the API key is missing or invalid. Pauses all submission."""

    code = 401


class InsufficientCredits(ProviderError):
    """402: the account is out of credits. Pauses all submission."""

    code = 402


class TaskNotFound(ProviderError):
    """404: the provider does not know this task."""

    code = 404


class Conflict(ProviderError):
    """409: active task limit reached (or another conflict). Not a failure: submit later."""

    code = 409


class ValidationFailed(ProviderError):
    """422 (and the family's 501, 505): the provider refused the parameters. Never retried."""

    code = 422


class RateLimited(ProviderError):
    """429: too many requests. `retry_after` says how many seconds to wait."""

    code = 429

    def __init__(self, message: str, *, retry_after: float, code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServerError(ProviderError):
    """500 (and the family's 455 maintenance): retry with backoff within a budget."""

    code = 500


class BadResponse(ProviderError):
    """The answer was not the JSON the contract promises (an HTML page, a cut body…)."""


class ProviderTimeout(ProviderError):
    """No answer within the timeout. Safe to retry: the X-Request-ID makes a create idempotent."""


class ProviderUnreachable(ProviderError):
    """The connection failed (refused, reset, DNS). Safe to retry like a timeout."""


ERRORS_BY_CODE: dict[int, type[ProviderError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientCredits,
    404: TaskNotFound,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
    455: ServerError,
    500: ServerError,
    501: ValidationFailed,
    505: ValidationFailed,
}

# Errors after which the very same request may simply be sent again later.
RETRYABLE_ERRORS = (ServerError, ProviderTimeout, ProviderUnreachable, BadResponse)


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    state: str
    result_urls: list[str] = field(default_factory=list)
    fail_code: str = ""
    fail_message: str = ""
    cost_time_ms: int | None = None
    create_time: datetime | None = None
    complete_time: datetime | None = None

    @property
    def is_pending(self) -> bool:
        # Any state the contract does not name is treated as still pending, never as a crash.
        return self.state not in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def failed(self) -> bool:
        return self.state == "fail"


def _epoch_ms(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _retry_after(response: requests.Response, data: Any) -> float:
    """Seconds a 429 asks to wait: `data.retryAfter`, else `Retry-After` (seconds or a date)."""
    if isinstance(data, dict) and data.get("retryAfter") is not None:
        try:
            return max(0.0, float(data["retryAfter"]))
        except (TypeError, ValueError):
            pass
    header = response.headers.get("Retry-After", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    # The provider asked us to slow down but not for how long: a minute is its widest window.
    return 60.0


class ProviderClient:
    """A thread-safe client with one pooled HTTP session per instance."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def create_task(
        self,
        prompt: str,
        *,
        aspect_ratio: str = "auto",
        resolution: str = "1K",
        output_format: str = "png",
        request_id: str | None = None,
    ) -> str:
        """Create a task and return its taskId. Send the same `request_id` on every try."""
        body = {
            "model": MODEL,
            "input": {
                "prompt": prompt,
                "aspect_ratio": aspect_ratio,
                "resolution": resolution,
                "output_format": output_format,
            },
        }
        data = self._call("POST", "/api/v1/jobs/createTask", json=body, request_id=request_id)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise BadResponse("The provider accepted the task but sent no taskId.")
        return task_id

    def get_task(self, task_id: str) -> TaskRecord:
        data = self._call("GET", "/api/v1/jobs/recordInfo", params={"taskId": task_id})
        if not isinstance(data, dict):
            raise BadResponse("The provider's task record has no data.")
        state = data.get("state")
        if not isinstance(state, str) or not state:
            raise BadResponse("The provider's task record has no state.")
        result_urls: list[str] = []
        if state == "success":
            result_urls = self._result_urls(data.get("resultJson"))
        cost = data.get("costTime")
        return TaskRecord(
            task_id=str(data.get("taskId") or task_id),
            state=state,
            result_urls=result_urls,
            fail_code=str(data.get("failCode") or ""),
            fail_message=str(data.get("failMsg") or ""),
            cost_time_ms=int(cost) if isinstance(cost, int | float) else None,
            create_time=_epoch_ms(data.get("createTime")),
            complete_time=_epoch_ms(data.get("completeTime")),
        )

    @staticmethod
    def _result_urls(result_json: Any) -> list[str]:
        # resultJson is a JSON string inside the JSON answer.
        if isinstance(result_json, str):
            try:
                result_json = json.loads(result_json)
            except ValueError as e:
                raise BadResponse("The provider's resultJson is not valid JSON.") from e
        urls = result_json.get("resultUrls") if isinstance(result_json, dict) else None
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise BadResponse("The provider reported success but sent no result URLs.")
        return urls

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict | None = None,
        params: dict | None = None,
        request_id: str | None = None,
    ) -> Any:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "X-Request-ID": request_id or uuid.uuid4().hex,
        }
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                json=json,
                params=params,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout as e:
            raise ProviderTimeout(f"The provider did not answer within {self.timeout:g} s.") from e
        except requests.RequestException as e:
            reason = e.__class__.__name__
            raise ProviderUnreachable(f"Could not reach the provider ({reason}).") from e
        log.debug(
            "%s %s -> %s in %.0f ms",
            method,
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        code = payload.get("code") if isinstance(payload, dict) else None
        if not isinstance(code, int):
            code = None
        if code is None and response.status_code == 200:
            raise BadResponse(
                "The provider answered with something that is not the JSON it promises."
            )
        # The family sends the HTTP status equal to `code`; some servers say 200 and put the
        # error only in the body, so the body's code wins when there is one.
        status = code if code is not None else response.status_code
        data = payload.get("data") if isinstance(payload, dict) else None
        if status == 200:
            return data
        message = ""
        if isinstance(payload, dict):
            message = str(payload.get("msg") or payload.get("message") or "")
        message = message or f"The provider answered HTTP {response.status_code}."
        error_class = ERRORS_BY_CODE.get(status)
        if error_class is RateLimited:
            raise RateLimited(message, retry_after=_retry_after(response, data), code=status)
        if error_class is None:
            error_class = ServerError if status >= 500 else BadResponse
        raise error_class(message, code=status)


_clients: dict[tuple[str, str, float], ProviderClient] = {}
_clients_lock = threading.Lock()


def get_client() -> ProviderClient:
    """The process's client for the configured provider, reused so its connections are pooled."""
    from django.conf import settings

    key = (settings.AIGPTIMAGE_BASE_URL, settings.AIGPTIMAGE_API_KEY, settings.AIGPTIMAGE_TIMEOUT)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = ProviderClient(key[0], key[1], timeout=key[2])
        return client
