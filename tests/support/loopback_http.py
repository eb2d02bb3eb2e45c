"""A threaded HTTP server on 127.0.0.1 (free port) run in the background: base of the test servers."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietOnDisconnect(ThreadingHTTPServer):
    """A client that goes away mid-request (a killed download) is normal here, not a traceback."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackHTTPServer:
    """Serve `handler` on 127.0.0.1 in a daemon thread; use as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self._httpd = _QuietOnDisconnect(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
