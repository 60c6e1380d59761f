"""A hostile file server on loopback, for the result fetcher's tests, and hand-made PNG files.

The server records every TCP connection it accepts (before any HTTP is parsed, so a TLS hello
counts too) and every request, so a test can say that a refused URL never reached it.
"""

from __future__ import annotations

import ssl
import struct
import threading
import zlib
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int, *, complete: bool = True) -> bytes:
    """A black 1-bit PNG of any size, small on disk whatever it costs to decode.

    Complete, it decodes to width x height bytes in Pillow (a 12000x12000 one is 18 kB on disk,
    144 MB decoded). With `complete=False` its pixel data stops after a few rows, which is all a
    header-only check needs, however large the image claims to be.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    rows = height if complete else 4
    pixels = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        files: dict[str, tuple[str, bytes]],
        context: ssl.SSLContext | None = None,
        port: int = 0,
    ):
        super().__init__(("127.0.0.1", port), HostileHandler)
        self.files = files
        self.context = context
        self.connections: list[tuple[str, int]] = []
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.stopping = threading.Event()

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def url(self, path: str) -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://{self.host_port}{path}"

    def verify_request(self, request, client_address) -> bool:
        self.connections.append(client_address)
        return True

    def get_request(self):
        sock, address = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        pass  # a client that refuses our certificate, or hangs up early, is expected here

    def start(self) -> None:
        # A short poll interval, so that `stop` returns at once.
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class HostileHandler(BaseHTTPRequestHandler):
    """Paths:

    /files/NAME            a file from `server.files`, with its Content-Type and Content-Length
    /status/CODE           that status with a short body
    /redirect?to=URL       302 to URL
    /hops/N                302 to /hops/N-1; /hops/0 serves /files/good.png
    /trickle               Content-Length 100000, then one byte a second
    /slow-headers          a status line, then the headers at five bytes a second
    /declared-huge         Content-Length 200 MB, then zeros as fast as they go
    /endless               no Content-Length, zeros as fast as they go
    /cut                   Content-Length 10000, 100 bytes, then the connection closes
    """

    server: HostileServer

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host", "")))
        parts = urlsplit(self.path)
        name = parts.path.strip("/").split("/")
        # The client hangs up early, as it should, on most of these paths.
        with suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.answer(name, parse_qs(parts.query))

    def answer(self, name: list[str], query: dict[str, list[str]]) -> None:
        match name:
            case ["files", file_name] if file_name in self.server.files:
                content_type, body = self.server.files[file_name]
                self.send(200, body, content_type)
            case ["status", code]:
                self.send(int(code), b"no", "text/plain")
            case ["redirect"]:
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            case ["hops", count]:
                if int(count) == 0:
                    content_type, body = self.server.files["good.png"]
                    self.send(200, body, content_type)
                    return
                self.send_response(302)
                self.send_header("Location", f"/hops/{int(count) - 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            case ["trickle"]:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.drip(b"\0" * 100000)
            case ["slow-headers"]:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                # Faster than any timeout per read, slower than any deadline in total.
                self.drip(b"X-Slow: " + b"a" * 1000 + b"\r\n\r\n", interval=0.2)
            case ["declared-huge"]:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(200 * 1024 * 1024))
                self.end_headers()
                self.flood()
            case ["endless"]:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.flood()
            case ["cut"]:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "10000")
                self.end_headers()
                self.wfile.write(b"\0" * 100)
                self.close_connection = True
            case _:
                self.send(404, b"not found", "text/plain")

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def drip(self, data: bytes, interval: float = 1.0) -> None:
        for position in range(len(data)):
            self.wfile.write(data[position : position + 1])
            self.wfile.flush()
            if self.server.stopping.wait(interval):
                return

    def flood(self) -> None:
        zeros = b"\0" * 65536
        while not self.server.stopping.is_set():
            self.wfile.write(zeros)
