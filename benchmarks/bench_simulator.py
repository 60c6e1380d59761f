"""Benchmark the provider simulator alone, over loopback HTTP.

    .venv/bin/python benchmarks/bench_simulator.py

(a) createTask and recordInfo latency and throughput with 8 concurrent clients on one "pro" key,
    in bursts that stay inside the tier's per-second limits (20 creates/s, 100 queries/s);
(b) the first (uncached) download of a 4K 1:1 PNG, a 4K 1:8 PNG and a 4K 1:1 JPEG, and a
    cached re-download;
(c) 8 clients downloading 8 different uncached 1K PNGs at once.

The simulator runs in a thread of this process, as in the tests, so clients and server share
one interpreter and its GIL: a client in another process would see somewhat more throughput.
About 10 s and about 500 requests, all to 127.0.0.1. A 429 would be counted, waited out and
tried again (at most 3 times), so that it shows in the figures rather than stopping the run.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from common import machine_line, percentile
from PIL import Image

from simulator import SimulatorConfig, SimulatorServer, start_in_thread

API_KEY = "bench-key"
CLIENTS = 8
# A 1K task takes about 15 ms and a 4K one about 60 ms, so tasks never pile up against the
# tier's 30 active tasks and downloads can start at once.
SPEED = 0.001
BURSTS = 4
CREATE_BURST = 18  # pro allows 20 createTask calls in any one second
QUERY_BURST = 90  # pro allows 100 recordInfo calls in any one second
# A call counts against the sliding one-second window until a second after it was made.
WINDOW_GAP = 1.05
TIMEOUT = 30
RATE_LIMIT_TRIES = 3


@dataclass
class Tally:
    """HTTP statuses of every API call made, to report any 429 or 409."""

    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1


class Client:
    """One benchmark client: its own requests.Session, so its own keep-alive connection."""

    def __init__(self, base_url: str, tally: Tally) -> None:
        self.base_url = base_url
        self.tally = tally
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {API_KEY}"

    def create(self, prompt: str, resolution: str = "1K", **params: str) -> str:
        body = {
            "model": "nano-banana-2-text-to-image",
            "input": {"prompt": prompt, "resolution": resolution, **params},
        }
        return self._call("POST", "createTask", json=body)["taskId"]

    def record(self, task_id: str) -> dict:
        return self._call("GET", "recordInfo", params={"taskId": task_id})

    def _call(self, method: str, name: str, **kwargs: Any) -> dict:
        """One API call; a 429 is counted and the call tried again when the answer says."""
        for _ in range(RATE_LIMIT_TRIES):
            response = self.session.request(
                method, f"{self.base_url}/api/v1/jobs/{name}", timeout=TIMEOUT, **kwargs
            )
            self.tally.add(response.status_code)
            if response.status_code != 429:
                response.raise_for_status()
                return response.json()["data"]
            time.sleep(min(2.0, float(response.headers.get("Retry-After", 1))))
        raise RuntimeError(f"{name} was still rate limited after {RATE_LIMIT_TRIES} tries")

    def result_url(self, task_id: str) -> str:
        """Wait for the task to succeed and return its first result URL."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            record = self.record(task_id)
            if record["state"] == "success":
                return json.loads(record["resultJson"])["resultUrls"][0]
            if record["state"] == "fail":
                raise RuntimeError(f"task {task_id} failed: {record['failMsg']}")
            time.sleep(0.05)
        raise TimeoutError(f"task {task_id} did not finish within {TIMEOUT} s")

    def download(self, url: str) -> bytes:
        response = self.session.get(url, timeout=TIMEOUT)
        response.raise_for_status()
        return response.content

    def close(self) -> None:
        self.session.close()


def timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def bursts(
    clients: list[Client],
    pool: ThreadPoolExecutor,
    burst: int,
    call: Callable[[Client, int], object],
) -> tuple[list[float], float]:
    """BURSTS bursts of `burst` calls spread over the clients, each burst as fast as they go.

    Returns every call's latency and the seconds spent inside bursts (the waits between bursts,
    which keep the key inside its per-second limit, do not count).
    """

    def work(index: int) -> list[float]:
        client = clients[index]
        return [timed(lambda n=n: call(client, n))[0] for n in range(index, burst, len(clients))]

    latencies: list[float] = []
    busy = 0.0
    for round_ in range(BURSTS):
        if round_:
            time.sleep(WINDOW_GAP)
        burst_started = time.perf_counter()
        for result in pool.map(work, range(len(clients))):
            latencies.extend(result)
        busy += time.perf_counter() - burst_started
    return latencies, busy


def latency_row(name: str, latencies: list[float], busy: float) -> str:
    ms = [s * 1000 for s in latencies]
    return (
        f"{name:<12} {len(ms):>6} {percentile(ms, 50):>8.1f} {percentile(ms, 95):>8.1f} "
        f"{max(ms):>8.1f} {len(ms) / busy:>16.0f}"
    )


def bench_api(clients: list[Client], pool: ThreadPoolExecutor) -> list[str]:
    task_ids: list[str] = []
    ids_lock = threading.Lock()

    def create(client: Client, n: int) -> None:
        task_id = client.create(f"benchmark picture {n} of a banana on a bicycle")
        with ids_lock:
            task_ids.append(task_id)

    create_latencies, create_busy = bursts(clients, pool, CREATE_BURST, create)
    time.sleep(WINDOW_GAP)

    def query(client: Client, n: int) -> None:
        client.record(task_ids[n % len(task_ids)])

    query_latencies, query_busy = bursts(clients, pool, QUERY_BURST, query)
    time.sleep(WINDOW_GAP)
    return [
        f"(a) API calls from {CLIENTS} concurrent clients: {BURSTS} bursts of {CREATE_BURST} "
        f"createTask, then {BURSTS} of {QUERY_BURST} recordInfo,",
        "    one rate-limit window apart (latency in ms)",
        f"{'call':<12} {'calls':>6} {'p50':>8} {'p95':>8} {'max':>8} {'calls/s in burst':>16}",
        latency_row("createTask", create_latencies, create_busy),
        latency_row("recordInfo", query_latencies, query_busy),
    ]


def describe(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as picture:
        return f"{picture.format} {picture.width}x{picture.height}"


def bench_4k(client: Client) -> list[str]:
    cases = [
        ("4K 1:1 PNG", "1:1", "png"),
        ("4K 1:8 PNG", "1:8", "png"),
        ("4K 1:1 JPEG", "1:1", "jpg"),
    ]
    rows = [
        "(b) first download of a 4K image (drawn and encoded on this request), then cached",
        f"{'image':<20} {'seconds':>8} {'MB':>7}  what came back",
    ]
    first_url = ""
    for name, aspect_ratio, output_format in cases:
        task_id = client.create(
            f"a 4K benchmark of {name}",
            "4K",
            aspect_ratio=aspect_ratio,
            output_format=output_format,
        )
        url = client.result_url(task_id)
        first_url = first_url or url
        seconds, data = timed(lambda url=url: client.download(url))
        rows.append(f"{name:<20} {seconds:>8.3f} {len(data) / 1e6:>7.1f}  {describe(data)}")
    seconds, data = timed(lambda: client.download(first_url))
    rows.append(
        f"{'4K 1:1 PNG, cached':<20} {seconds:>8.3f} {len(data) / 1e6:>7.1f}  {describe(data)}"
    )
    return rows


def bench_parallel_1k(clients: list[Client], pool: ThreadPoolExecutor) -> list[str]:
    urls = [
        clients[0].result_url(clients[0].create(f"a 1K benchmark picture number {n}"))
        for n in range(CLIENTS + 1)
    ]
    single, _ = timed(lambda: clients[0].download(urls[-1]))
    barrier = threading.Barrier(CLIENTS)

    def fetch(index: int) -> float:
        barrier.wait(timeout=TIMEOUT)
        return timed(lambda: clients[index].download(urls[index]))[0]

    wall, latencies = timed(lambda: list(pool.map(fetch, range(CLIENTS))))
    return [
        f"(c) {CLIENTS} clients each downloading a different uncached 1K PNG at once",
        f"one 1K PNG alone            {single:>7.3f} s",
        f"{CLIENTS} at once, wall time        {wall:>7.3f} s "
        f"(each {min(latencies):.3f}-{max(latencies):.3f} s)",
    ]


def main() -> None:
    server: SimulatorServer = start_in_thread(
        SimulatorConfig(api_keys={API_KEY: "pro"}, speed=SPEED, seed=7)
    )
    tally = Tally()
    clients = [Client(server.base_url, tally) for _ in range(CLIENTS)]
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            lines = bench_api(clients, pool)
            lines += ["", *bench_4k(clients[0])]
            lines += ["", *bench_parallel_1k(clients, pool)]
        status = server.simulator.status()
    finally:
        for client in clients:
            client.close()
        server.shutdown()
        server.server_close()
    answers = ", ".join(f"{code}: {n}" for code, n in sorted(status["answers"].items()))
    seen = ", ".join(f"{code}: {n}" for code, n in sorted(tally.statuses.items()))
    print("Simulator benchmark: one pro key, simulator in a thread of this process, loopback HTTP")
    print()
    print("\n".join(lines))
    print()
    print(f"API answers by status (simulator): {answers}; seen by clients: {seen}")
    print(
        f"429 answers: {status['answers'].get('429', 0)}, 409 answers: "
        f"{status['answers'].get('409', 0)}; {status['downloads']} downloads; "
        f"whole run {time.perf_counter() - started:.1f} s"
    )
    print(machine_line())


if __name__ == "__main__":
    main()
