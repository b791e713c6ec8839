"""A small HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` (stdlib only).

``/healthz``: 200 ``{"status": "ok"}`` while the process serves requests (liveness).
``/readyz``: 200 with :meth:`Readiness.as_dict` when :func:`check_ready` says ready, else 503
with the reason; ``?max_lag=N`` overrides the server's lag bound for one request.
``/metrics``: the Prometheus exposition of ``registry`` (only when one is given: a worker's
metrics are served by Dramatiq's Prometheus middleware, not here).

Requests are served by a :class:`ThreadingHTTPServer`, so a slow Redis delays one probe,
never the next one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .health import Readiness, check_ready

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["HealthServer"]

logger = logging.getLogger("chi_redis.observe")


class HealthServer:
    """Serves the health endpoints (and ``/metrics`` with a registry) on ``host:port``.

    ``subscriptions`` returns the names ``/readyz`` checks (None: every registered one).
    ``port=0`` picks a free port (see :attr:`port`).  :meth:`start` serves in a daemon
    thread; :meth:`serve_forever` in the calling one; :meth:`stop` from any thread.
    """

    def __init__(
        self, bus: EventBus, *, host: str = "127.0.0.1", port: int = 0,
        registry: Any = None, max_lag: int | None = None,
        subscriptions: Callable[[], Iterable[str] | None] = lambda: None,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.max_lag = max_lag
        self.subscriptions = subscriptions
        self.httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.httpd.server_address[1])

    def ready(self, max_lag: int | None = None) -> Readiness:
        """The readiness check with this server's settings (``max_lag`` overrides)."""
        bound = self.max_lag if max_lag is None else max_lag
        return check_ready(self.bus, self.subscriptions(), max_lag=bound)

    def start(self) -> HealthServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="chi-health",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`."""
        self.httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving and close the socket (waits for :meth:`serve_forever` to return)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        url = urlsplit(path)
        if url.path == "/healthz":
            return _json(200, {"status": "ok"})
        if url.path == "/readyz":
            raw = parse_qs(url.query).get("max_lag", [None])[0]
            try:
                bound = None if raw is None else int(raw)
            except ValueError:
                return _json(400, {"status": "error", "reason": "max_lag must be an integer"})
            r = self.ready(bound)
            return _json(200 if r.ok else 503, r.as_dict())
        if url.path == "/metrics" and self.registry is not None:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return _json(404, {"status": "error", "reason": f"no such path: {url.path}"})


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


def _handler_class(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                status, ctype, body = server.respond(self.path)
            except Exception:  # a bug must answer 500, not drop the connection
                logger.exception("health server: %s failed", self.path)
                status, ctype, body = _json(500, {"status": "error", "reason": "internal"})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes arrive every few seconds: keep them out of the process's stderr.
            logger.debug("health server: " + format, *args)

    return Handler
