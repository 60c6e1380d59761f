"""The HTTP side: a threaded server on loopback that hands every request to a `Simulator`."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from simulator.config import SimulatorConfig
from simulator.state import Reply, Request, Simulator

MAX_BODY_BYTES = 1_000_000


class _Handler(BaseHTTPRequestHandler):
    server: SimulatorServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the app's pooled client expects
    # Headers and body go out in two writes; with Nagle on, a delayed ACK costs 40 ms each.
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is dropped after this

    def version_string(self) -> str:
        # What the real service's front answers; the client has no business knowing otherwise.
        return "nginx"

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        simulator = self.server.simulator
        try:
            reply = self._read_and_handle(simulator)
        except Exception:
            # A bug in the simulator must show, but never kill the connection's thread.
            traceback.print_exc()
            self.close_connection = True
            reply = simulator.internal_error()
        if reply.delay > 0:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            # The client went away (a timeout on its side, or the server shutting down).
            self.close_connection = True

    def _read_and_handle(self, simulator: Simulator) -> Reply:
        url = urlsplit(self.path)
        length_header = self.headers.get("Content-Length")
        if length_header is None and self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return simulator.error(411, "Content-Length is required")
        try:
            length = int(length_header or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            # The unread body would be taken for the next request: close instead.
            self.close_connection = True
            return simulator.error(413, "request body is too large")
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, url.path, parse_qs(url.query), self.headers, body)
        return simulator.handle(request)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.simulator.config.verbose:
            sys.stderr.write(f"simulator {self.address_string()} {format % args}\n")


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent clients must not see refused connections

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.base_url = simulator.base_url = f"http://{shown}:{port}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without a network.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is ordinary; anything else is a bug worth a traceback.
        if self.simulator.config.verbose or not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening, drop idle keep-alive connections so no handler thread lingers, and
        write the state file, if there is one."""
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        state_file = self.simulator.config.state_file
        if state_file is not None:
            self.simulator.save_state(state_file)


def make_server(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8765
) -> SimulatorServer:
    """A bound server, not yet serving; port 0 picks a free port (see `.base_url`)."""
    return SimulatorServer((host, port), Simulator(config))


def start_in_thread(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> SimulatorServer:
    """Serve in a daemon thread. The caller stops it with shutdown() then server_close() (which
    writes the state file, if any)."""
    server = make_server(config, host, port)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"simulator-{server.server_port}",
        daemon=True,
    )
    thread.start()
    return server
