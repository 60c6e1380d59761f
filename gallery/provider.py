"""Client for the Nano Banana 2 text-to-image jobs API (see docs/provider-contract.md).

Two calls: `create_task` and `get_task`. Every error of the contract is its own exception class,
each carrying the provider's message, so callers decide with `except` clauses rather than by
comparing numbers. The client knows nothing of Django models; it takes plain values and returns
a small `TaskRecord`.

The result files a success record names are fetched with `fetch_result`, which downloads only
from public addresses (or the hosts the operator allows) within a size cap and a deadline, and
checked with `open_result_image`, which refuses anything that is not the image asked for before
decoding it. Their errors are the `ResultError` family.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import ipaddress
import json
import logging
import math
import os
import re
import socket
import struct
import threading
import time
import uuid
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import certifi
import requests
import urllib3.exceptions
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection

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
    """Any failure to get a usable answer from the provider.

    `message` says what happened, for the log; `said` is the provider's own words from its
    answer, if it gave any, which a message to the user may quote.
    """

    code: int | None = None

    def __init__(self, message: str, *, code: int | None = None, said: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.said = said
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

    def __init__(
        self, message: str, *, retry_after: float, code: int | None = None, said: str = ""
    ) -> None:
        super().__init__(message, code=code, said=said)
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


# costTime is kept in a PositiveIntegerField: 32-bit in PostgreSQL.
COST_TIME_MAX_MS = 2**31 - 1


def _cost_time_ms(value: Any) -> int | None:
    """costTime in whole milliseconds, or None for what is not a plausible duration: a string,
    a boolean, NaN or Infinity (Python's JSON reader accepts both), a negative number or one
    past the column's range. A record with an odd costTime is still a record."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0 <= value <= COST_TIME_MAX_MS:
        return None
    return int(value)


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

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float = 30.0, max_result_urls: int = 4
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        # Each result URL is a download; a record naming dozens must not make dozens.
        self.max_result_urls = max_result_urls
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
            result_urls = self._result_urls(task_id, data.get("resultJson"))
        return TaskRecord(
            task_id=str(data.get("taskId") or task_id),
            state=state,
            result_urls=result_urls,
            fail_code=str(data.get("failCode") or ""),
            fail_message=str(data.get("failMsg") or ""),
            cost_time_ms=_cost_time_ms(data.get("costTime")),
            create_time=_epoch_ms(data.get("createTime")),
            complete_time=_epoch_ms(data.get("completeTime")),
        )

    def _result_urls(self, task_id: str, result_json: Any) -> list[str]:
        # resultJson is a JSON string inside the JSON answer.
        if isinstance(result_json, str):
            try:
                result_json = json.loads(result_json)
            except ValueError as e:
                raise BadResponse("The provider's resultJson is not valid JSON.") from e
        urls = result_json.get("resultUrls") if isinstance(result_json, dict) else None
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise BadResponse("The provider reported success but sent no result URLs.")
        if len(urls) > self.max_result_urls:
            log.warning(
                "Task %s names %d result URLs; keeping the first %d",
                task_id,
                len(urls),
                self.max_result_urls,
            )
            urls = urls[: self.max_result_urls]
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
        said = ""
        if isinstance(payload, dict):
            said = str(payload.get("msg") or payload.get("message") or "").strip()
        message = said or f"The provider answered HTTP {response.status_code}."
        error_class = ERRORS_BY_CODE.get(status)
        if error_class is RateLimited:
            retry_after = _retry_after(response, data)
            raise RateLimited(message, retry_after=retry_after, code=status, said=said)
        if error_class is None:
            error_class = ServerError if status >= 500 else BadResponse
        raise error_class(message, code=status, said=said)


_clients: dict[tuple[str, str, float, int], ProviderClient] = {}
_clients_lock = threading.Lock()


def get_client() -> ProviderClient:
    """The process's client for the configured provider, reused so its connections are pooled."""
    from django.conf import settings

    key = (
        settings.AIGPTIMAGE_BASE_URL,
        settings.AIGPTIMAGE_API_KEY,
        settings.AIGPTIMAGE_TIMEOUT,
        settings.AIGPTIMAGE_MAX_RESULT_URLS,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = ProviderClient(
                key[0], key[1], timeout=key[2], max_result_urls=key[3]
            )
        return client


# Result files
#
# A result URL comes from the provider's answer, so it is untrusted input: fetched as it is, it
# could point the worker at the cloud's metadata service, at a database on the private network,
# or at a file that never ends. `fetch_result` downloads only over https from public addresses
# (plain http and private addresses only for the hosts the operator lists, which is how the
# simulator is reached), connects to the very address it checked, follows redirects by hand and
# checks each hop the same way, and holds the whole transfer to one deadline and one size cap.


class ResultError(Exception):
    """A result file could not be fetched, or is not an acceptable image.

    Kept apart from `ProviderError` on purpose: these come from the file host, not from the jobs
    API, so an `except ProviderError` around an API call never catches them, and they can never
    count against the API's retry budget or open its 401/402 circuit.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ResultRefused(ResultError):
    """The URL, a redirect hop, the size or the file itself is not acceptable. Permanent."""


class ResultGone(ResultError):
    """The file host answered 401, 403, 404 or 410: the result expired. Permanent."""


class ResultUnavailable(ResultError):
    """A transient failure (connection, 5xx, 429, deadline, body cut off): try again later."""


# Every refused address gets this one message, whatever the reason, so that nobody can scan our
# network (which hosts resolve, which ports answer) by reading error texts. The reason is logged.
RESULT_ADDRESS_REFUSED = "The image service gave a result address we do not download from."
RESULT_TOO_LARGE = "The finished image is larger than we accept."
RESULT_GONE = "The finished image expired at the image service before it could be saved."
RESULT_TOO_SLOW = "The image service's file server took too long to send the finished image."
RESULT_UNREACHABLE = "The image service's file server could not be reached."
RESULT_BROKEN_OFF = "The download of the finished image broke off."
IMAGE_NOT_READABLE = "The finished file is not a PNG or JPEG image."
IMAGE_INCOMPLETE = "The finished file is not a complete image."
IMAGE_TOO_MANY_PIXELS = "The finished image is far larger than the size that was asked for."

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
GONE_STATUSES = (401, 403, 404, 410)
DEFAULT_PORTS = {"http": 80, "https": 443}
READ_SIZE = 64 * 1024
# Carrier-grade NAT (RFC 6598): shared by a provider's customers, never a public file host.
CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
# IPv6 ranges that carry an IPv4 address in their last 32 bits: IPv4-compatible (deprecated,
# but still routed by some stacks) and NAT64, which a gateway translates to that IPv4 address.
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Spaces and control characters have no place in a URL; refusing them also rules out header
# injection through the request line.
URL_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")
# What may stay as it is on the request line: printable ASCII. Anything else is %-encoded.
REQUEST_LINE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True)
class FetchedResult:
    bytes_written: int
    content_type: str
    final_url: str


@dataclass(frozen=True)
class _Hop:
    """One checked URL: where to connect (already resolved) and what to send."""

    scheme: str
    hostname: str
    port: int
    host_header: str
    target: str
    addresses: tuple[str, ...]


def fetch_result(
    url: str,
    out: BinaryIO,
    *,
    allowed_hosts: Collection[str],
    max_bytes: int,
    deadline: float,
    max_redirects: int = 3,
) -> FetchedResult:
    """Download one result file into the binary file `out` (pass a temporary file).

    `allowed_hosts` are "host:port" strings that may be reached over plain http and on loopback
    or private addresses; every other URL must be https to a public address. `deadline` is the
    wall-clock limit, in seconds, of the whole transfer across redirects (name lookups are
    bounded by the system resolver's own timeout). On an error `out` may hold part of a body:
    the caller throws it away.
    """
    allowed = frozenset(host.strip().lower() for host in allowed_hosts)
    clock = _Deadline(deadline)
    try:
        for _ in range(max_redirects + 1):
            hop = _check_url(url, allowed)
            outcome = _fetch_hop(url, hop, out, clock, max_bytes)
            if isinstance(outcome, FetchedResult):
                return outcome
            url = urljoin(url, outcome)
        raise _refused(url, f"more than {max_redirects} redirects")
    finally:
        clock.close()


def _refused(url: str, reason: str) -> ResultRefused:
    # The full reason goes to the operator's log only; the URL is logged without its query,
    # where signed URLs keep their credentials.
    log.warning("Refused result URL %r: %s", re.split(r"[?#]", url, maxsplit=1)[0][:300], reason)
    return ResultRefused(RESULT_ADDRESS_REFUSED)


def _check_url(url: str, allowed: frozenset[str]) -> _Hop:
    if URL_UNSAFE_CHARACTERS.search(url):
        raise _refused(url, "a space or control character in the URL")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError as e:
        raise _refused(url, f"not a valid URL ({e})") from e
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _refused(url, f"scheme {scheme!r}")
    if "@" in parts.netloc:
        raise _refused(url, "user information in the address")
    if not hostname:
        raise _refused(url, "no host")
    try:
        hostname = hostname if hostname.isascii() else hostname.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise _refused(url, f"host {hostname!r} is not a valid name") from e
    port = port or DEFAULT_PORTS[scheme]
    netloc_host = f"[{hostname}]" if ":" in hostname else hostname
    is_allowed = f"{netloc_host}:{port}" in allowed
    if scheme == "http" and not is_allowed:
        raise _refused(url, "plain http to a host not in AIGPTIMAGE_RESULT_HOSTS_ALLOWED")
    # One lookup; the connection goes to the address checked here, so a name that resolves to
    # a public address now and to a private one a moment later (DNS rebinding) gains nothing.
    try:
        found = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise _refused(url, f"{hostname} does not resolve ({e})") from e
    addresses: list[str] = []
    for *_, sockaddr in found:
        address = str(sockaddr[0])
        if not is_allowed and (reason := _not_public(ipaddress.ip_address(address))):
            raise _refused(url, f"{hostname} resolves to {address}, {reason}")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _refused(url, f"{hostname} has no address")
    default_port = port == DEFAULT_PORTS[scheme]
    return _Hop(
        scheme=scheme,
        hostname=hostname,
        port=port,
        host_header=netloc_host if default_port else f"{netloc_host}:{port}",
        target=quote(parts.path or "/", safe=REQUEST_LINE_SAFE)
        + (f"?{quote(parts.query, safe=REQUEST_LINE_SAFE)}" if parts.query else ""),
        addresses=tuple(addresses),
    )


def _not_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not a public one (loopback, private…), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address in IPV4_COMPATIBLE or address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (reason := _not_public(embedded)):
            return f"which carries {embedded}, {reason}"
        if address.is_site_local:
            return "a site-local address"
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if address.version == 4 and address in CARRIER_GRADE_NAT:
        return "a carrier-grade NAT address"
    if not address.is_global:
        return "not a globally reachable address"
    return None


class _Deadline:
    """The wall-clock limit of one transfer, kept two ways.

    Every socket operation gets the time left as its timeout, which ends a stalled read at the
    deadline. But the TLS handshake and the headers are read by many receives under one
    timeout, which a server can dodge by sending a byte at a time; so a timer also shuts the
    connection down when the time is up, which ends whatever read is in progress at once.
    """

    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0 or self.expired:
            raise ResultUnavailable(RESULT_TOO_SLOW)
        return left

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.ends

    def watch(self, sock: socket.socket) -> None:
        # A duplicate of the socket: TLS takes over the original, and shutting down any
        # descriptor of a connection shuts down the connection.
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                self._shut_down()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut_down()

    def _shut_down(self) -> None:
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class _Watched:
    """Makes a urllib3 connection hand its socket to the deadline as soon as it is opened."""

    deadline: _Deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self.deadline.watch(sock)
        return sock


class _WatchedConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


def _connect(hop: _Hop, clock: _Deadline) -> HTTPConnection:
    """Connect to the first of the hop's checked addresses that answers."""
    failure: Exception | None = None
    for address in hop.addresses:
        connection: HTTPConnection
        if hop.scheme == "https":
            # SNI and the certificate check use the URL's host name; the TCP connection goes
            # to the address that was checked. No proxy: urllib3 reads none from the environment.
            connection = _WatchedHTTPSConnection(
                address,
                hop.port,
                timeout=clock.left(),
                server_hostname=hop.hostname,
                assert_hostname=hop.hostname,
                cert_reqs="CERT_REQUIRED",
                ca_certs=certifi.where(),
            )
        else:
            connection = _WatchedConnection(address, hop.port, timeout=clock.left())
        connection.deadline = clock
        try:
            connection.connect()
            return connection
        # A certificate for another name is a CertificateError, which is a ValueError.
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            connection.close()
            failure = e
            if clock.passed():
                break
    if clock.passed():
        raise ResultUnavailable(RESULT_TOO_SLOW) from failure
    log.warning("Could not connect to %s:%s (%s)", hop.hostname, hop.port, failure)
    raise ResultUnavailable(RESULT_UNREACHABLE) from failure


def _fetch_hop(
    url: str, hop: _Hop, out: BinaryIO, clock: _Deadline, max_bytes: int
) -> FetchedResult | str:
    """GET one checked URL: a redirect's Location, or the result once its body is in `out`."""
    connection = _connect(hop, clock)
    sock = connection.sock
    try:
        connection.timeout = clock.left()
        connection.request(
            "GET",
            hop.target,
            headers={
                "Host": hop.host_header,
                "Accept": "image/png, image/jpeg",
                "Accept-Encoding": "identity",
            },
            preload_content=False,
            decode_content=False,
        )
        response = connection.getresponse()
        status = response.status
        location = response.headers.get("Location")
        if status in REDIRECT_STATUSES and location:
            return location
        if status in GONE_STATUSES:
            raise ResultGone(RESULT_GONE)
        if status != 200:
            log.warning("Result file host %s answered HTTP %s", hop.hostname, status)
            raise ResultUnavailable(
                "The image service's file server did not send the image "
                f"(it answered HTTP {status})."
            )
        declared = response.length_remaining
        if declared is not None and declared > max_bytes:
            log.warning("Result file declared %d bytes, more than %d", declared, max_bytes)
            raise ResultRefused(RESULT_TOO_LARGE)
        written = 0
        # One recv at a time, each given only the time that is left. The response closes its
        # socket as soon as the last byte it expects is in.
        while not response.closed:
            sock.settimeout(clock.left())
            chunk = response.read1(READ_SIZE)
            if not chunk:
                break
            if written + len(chunk) > max_bytes:
                log.warning("Result file grew past %d bytes", max_bytes)
                raise ResultRefused(RESULT_TOO_LARGE)
            out.write(chunk)
            written += len(chunk)
        if clock.passed():
            raise ResultUnavailable(RESULT_TOO_SLOW)
        return FetchedResult(
            bytes_written=written,
            content_type=response.headers.get("Content-Type", ""),
            final_url=url,
        )
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
        if clock.passed():
            raise ResultUnavailable(RESULT_TOO_SLOW) from e
        log.warning("Result download from %s broke off: %r", hop.hostname, e)
        raise ResultUnavailable(RESULT_BROKEN_OFF) from e
    finally:
        connection.close()


# Result images

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
# The contract's output sizes at 1K; 2K doubles and 4K quadruples each side; `auto` is 1:1.
SIZES_1K = {
    "1:1": (1024, 1024), "2:3": (848, 1264), "3:2": (1264, 848), "3:4": (896, 1200),
    "4:3": (1200, 896), "4:5": (928, 1152), "5:4": (1152, 928), "9:16": (768, 1376),
    "16:9": (1376, 768), "21:9": (1584, 672), "1:4": (512, 2048), "4:1": (2048, 512),
    "1:8": (384, 3072), "8:1": (3072, 384),
}  # fmt: skip
RESOLUTION_SCALE = {"1K": 1, "2K": 2, "4K": 4}
# The provider "does not promise these sizes", so we store what came back, of any shape, as long
# as it has at most 1.5 times the documented pixel count for the ratio and resolution asked. A
# smaller picture is kept (it costs nothing to decode); a bigger one is a decompression bomb or
# not what was asked for, and is refused from its header, before a single pixel is decoded.
SIZE_TOLERANCE = 1.5


def documented_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """The contract's (width, height) for a ratio and resolution."""
    width, height = SIZES_1K["1:1" if aspect_ratio == "auto" else aspect_ratio]
    scale = RESOLUTION_SCALE[resolution]
    return width * scale, height * scale


@dataclass(frozen=True)
class ResultImage:
    """A checked, fully decoded result image."""

    picture: PILImage.Image
    format: str

    @property
    def width(self) -> int:
        return self.picture.width

    @property
    def height(self) -> int:
        return self.picture.height


def open_result_image(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    output_format: str,
    aspect_ratio: str,
    resolution: str,
    max_pixels: int,
) -> ResultImage:
    """Check a downloaded result (a path or a binary file, read from its start), then decode it.

    From the header alone: the format must be the one asked for and the size within the
    tolerance of the documented one. Then the image is decoded in full; a truncated file is
    refused, never padded out. `max_pixels` is Pillow's decompression-bomb limit, its warning
    made an error.
    """
    expected = IMAGE_FORMATS[output_format]
    width, height = documented_size(aspect_ratio, resolution)
    most_pixels = int(width * height * SIZE_TOLERANCE)
    # Pillow checks its limit in `Image.open`, before it reads a pixel. The limit is global to the
    # process; so is the warnings filter, which is why a worker checks one image at a time.
    PILImage.MAX_IMAGE_PIXELS = max_pixels
    with _binary_file(source) as fp, warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            fp.seek(0)
            picture = PILImage.open(fp, formats=tuple(IMAGE_FORMATS.values()))
            if picture.format != expected:
                raise ResultRefused(
                    f"The finished image is a {picture.format}, not the {expected} that was "
                    "asked for."
                )
            if picture.width * picture.height > most_pixels:
                log.warning(
                    "Result image is %dx%d; %s at %s is documented as %dx%d",
                    picture.width,
                    picture.height,
                    aspect_ratio,
                    resolution,
                    width,
                    height,
                )
                raise ResultRefused(IMAGE_TOO_MANY_PIXELS)
            # verify() checks every chunk (a PNG without its end is caught here, not by load).
            picture.verify()
            fp.seek(0)
            picture = PILImage.open(fp, formats=(expected,))
            picture.load()
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
            log.warning("Result image refused as a decompression bomb: %s", e)
            raise ResultRefused(IMAGE_TOO_MANY_PIXELS) from e
        except UnidentifiedImageError as e:
            raise ResultRefused(IMAGE_NOT_READABLE) from e
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
            raise ResultRefused(IMAGE_INCOMPLETE) from e
    return ResultImage(picture=picture, format=expected)


@contextmanager
def _binary_file(source: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    if hasattr(source, "read"):
        yield source
    else:
        with open(source, "rb") as fp:
            yield fp


# Thumbnails are sized by height, for a grid of justified rows about 220-300 CSS px tall, and keep
# the picture's shape. A very wide picture (8:1) is capped at this many times the target height
# in width instead, so that it does not weigh several times what a square one does.
THUMBNAIL_MAX_RATIO = 4
# Pillow first shrinks by a whole factor (cheap, in blocks) while the rest of the way is at least
# this factor, then resamples with Lanczos: a 4K picture costs little more than a 1K one, and
# the result is as sharp as Lanczos all the way at a thumbnail's size.
THUMBNAIL_REDUCING_GAP = 2.0
# WebP's effort, 0-6: at 2 both thumbnails of a 1024 px picture take about 60 ms of CPU against
# 95 ms at 4, and come out about 5 % bigger.
THUMBNAIL_WEBP_METHOD = 2


def thumbnail_size(width: int, height: int, target_height: int) -> tuple[int, int]:
    """A thumbnail's (width, height): `target_height` tall in the picture's own shape, at most
    THUMBNAIL_MAX_RATIO times `target_height` wide, and never bigger than the picture."""
    scale = min(1.0, target_height / height, THUMBNAIL_MAX_RATIO * target_height / width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnails(picture: PILImage.Image, heights: Collection[int]) -> list[bytes]:
    """WebP thumbnails of `picture`, one per target height (see `thumbnail_size`), in order.

    The biggest is made from the picture and each smaller one from the one above it, so a big
    picture is resampled once.
    """
    source = picture if picture.mode == "RGB" else picture.convert("RGB")
    made: dict[int, bytes] = {}
    for height in sorted(set(heights), reverse=True):
        size = thumbnail_size(picture.width, picture.height, height)
        if source.size != size:
            source = source.resize(
                size, PILImage.Resampling.LANCZOS, reducing_gap=THUMBNAIL_REDUCING_GAP
            )
        out = io.BytesIO()
        source.save(out, "WEBP", quality=80, method=THUMBNAIL_WEBP_METHOD)
        made[height] = out.getvalue()
    return [made[height] for height in heights]
