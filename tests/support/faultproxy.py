"""A fault-injecting HTTP proxy for tests: sits on 127.0.0.1 in front of a real server.

Clients talk to the proxy as if it were the server (set HF_ENDPOINT / the S3 endpoint to
`proxy.url`). Faults, all adjustable while running:
- `fail_every = N`: every Nth request is answered with the next status of `fail_statuses`
  (default 503, 500 alternating) without reaching the server;
- `drop_after = B, drops = K`: the next K responses with a body longer than B bytes send the
  headers and B bytes, then the connection is closed (a connection dropped mid-file).
`match` limits faults to requests whose "METHOD path" matches a regex.
"""

from __future__ import annotations

import http.client
import itertools
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler

from tests.support.loopback_http import LoopbackHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}
CHUNK = 256 * 1024


class FaultProxy(LoopbackHTTPServer):
    """Proxy to `upstream` ("host:port"); use as a context manager."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_every: int = 0,
        fail_statuses: tuple[int, ...] = (503, 500),
        drop_after: int = 0,
        drops: int = 0,
        match: str = ".*",
    ):
        self.upstream = upstream.removeprefix("http://").rstrip("/")
        self.fail_every = fail_every
        self.drop_after = drop_after
        self.drops = drops
        self.match = match
        self._statuses = itertools.cycle(fail_statuses)
        self._lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        self.dropped = 0
        super().__init__(_make_handler(self))

    def decide(self, method: str, path: str, body_length: int | None) -> tuple[int | None, int | None]:
        """(status to fail with, bytes after which to drop) for one request; both None = pass through."""
        with self._lock:
            self.requests += 1
            if not re.search(self.match, f"{method} {path}"):
                return None, None
            if self.fail_every and self.requests % self.fail_every == 0:
                self.failed += 1
                return next(self._statuses), None
            if self.drops and body_length is not None and body_length > self.drop_after:
                self.drops -= 1
                self.dropped += 1
                return None, self.drop_after
        return None, None


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    local = threading.local()

    def upstream() -> http.client.HTTPConnection:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
        return local.conn

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _read_body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            length = int(self.headers.get("Content-Length", 0) or 0)
            return self.rfile.read(length) if length else None

        def _forward(self) -> None:
            body = self._read_body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            try:
                conn = upstream()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                except (http.client.HTTPException, OSError):
                    local.conn = None  # a stale keep-alive connection: retry once on a fresh one
                    conn = upstream()
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
            except OSError as exc:
                self.send_error(502, f"upstream unreachable: {exc}")
                return
            length = response.getheader("Content-Length")
            fail, drop_after = proxy.decide(self.command, self.path, int(length) if length else None)
            if fail is not None:
                response.read()
                self.send_response(fail)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            if length is not None:
                self.send_header("Content-Length", length)
            else:
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            sent = 0
            while chunk := response.read(CHUNK):
                if drop_after is not None and sent + len(chunk) > drop_after:
                    self.wfile.write(chunk[: drop_after - sent])
                    self.wfile.flush()
                    conn.close()  # the upstream response is abandoned with it
                    local.conn = None
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler
