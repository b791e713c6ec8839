"""A TCP fault proxy on loopback between a client and a redis-server the test owns.

No toxiproxy server exists on this box, so the reliability cases put this small threaded
proxy in the path and break it on purpose:

- ``pass`` (the default, and what :meth:`FaultProxy.heal` returns to): bytes flow both ways;
- :meth:`~FaultProxy.reset`: every open connection is closed with ``SO_LINGER 0``, so both
  ends see a TCP RST (``Connection reset by peer``); :meth:`~FaultProxy.reset_after_bytes`
  arms the same once that many request bytes went through (a reset in the middle of a
  pipeline);
- :meth:`~FaultProxy.blackhole`: nothing is forwarded and nothing is closed, as in a network
  partition; the kernel keeps what was sent, so after :meth:`~FaultProxy.heal` late bytes
  (a late XACK) still arrive, as TCP would deliver them;
- :meth:`~FaultProxy.delay`: each chunk waits ``ms`` before it is forwarded;
- :meth:`~FaultProxy.drop_next_reply`: the next request (optionally: the next containing some
  bytes) is forwarded, and everything the server answers on that connection from then on is
  swallowed: the command ran but its client never hears of it and times out.
  :meth:`~FaultProxy.drop_reply_containing` does the same for the first reply that contains
  some bytes (an XREADGROUP reply naming a stream).

Counters (``accepted``, ``resets``, ``dropped``) and ``bytes_up`` / ``bytes_down`` let tests
wait on what happened.  Only sockets this object opened are ever closed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

_CHUNK = 65536
_POLL_S = 0.05


def _rst(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN (``SO_LINGER`` on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pipe:
    """One proxied connection: the client's socket, the server's, and a pump per direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.swallow = False  # its replies are dropped (drop_next_reply)
        self.closed = threading.Event()

    def start(self) -> None:
        for src, dst, up in ((self.client, self.server, True), (self.server, self.client, False)):
            threading.Thread(target=self._pump, args=(src, dst, up), daemon=True,
                             name=f"faultproxy-{'up' if up else 'down'}").start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not self.closed.is_set():
                if self.proxy.blackholed.is_set():
                    time.sleep(_POLL_S)  # read nothing: the kernel holds what was sent
                    continue
                ready, _, _ = select.select([src], [], [], _POLL_S)
                if not ready or self.proxy.blackholed.is_set():
                    continue
                data = src.recv(_CHUNK)
                if not data:
                    break
                self.proxy.forward(self, dst, data, up)
        except OSError:
            pass
        self.close()

    def close(self, rst: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            if rst:
                _rst(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy.forget(self)


class FaultProxy:
    """A proxy from ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``; see the module.

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._stopped = threading.Event()
        self.blackholed = threading.Event()
        self._delay_s = 0.0
        self._drop_request: bytes | None = None  # armed: b"" matches any request
        self._drop_reply: bytes | None = None
        self._reset_at: int | None = None
        self.accepted = 0
        self.resets = 0
        self.dropped = 0
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept_loop, daemon=True, name="faultproxy-accept").start()
        return self

    def stop(self) -> None:
        """Stop accepting and close every connection (FIN, not RST)."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for pipe in self.pipes():
            pipe.close()

    def pipes(self) -> list[_Pipe]:
        with self._lock:
            return list(self._pipes)

    def forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    # faults ---------------------------------------------------------------------------------
    def heal(self) -> None:
        """Back to ``pass``: forward everything, no delay, nothing armed."""
        with self._lock:
            self._delay_s = 0.0
            self._drop_request = self._drop_reply = None
            self._reset_at = None
        self.blackholed.clear()

    def reset(self) -> int:
        """RST every open connection now; how many were reset."""
        with self._lock:
            pipes = list(self._pipes)
            self.resets += len(pipes)  # counted first: a client may see its reset at once
        for pipe in pipes:
            pipe.close(rst=True)
        return len(pipes)

    def reset_after_bytes(self, n: int) -> None:
        """RST every connection once ``n`` more request bytes have been forwarded."""
        with self._lock:
            self._reset_at = self.bytes_up + n

    def blackhole(self) -> None:
        """Stop forwarding in both directions, keeping every socket open."""
        self.blackholed.set()

    def delay(self, ms: float) -> None:
        """Hold each chunk ``ms`` milliseconds before forwarding it."""
        with self._lock:
            self._delay_s = ms / 1000

    def drop_next_reply(self, request_contains: bytes = b"") -> None:
        """Forward the next request (containing ``request_contains``) and swallow every reply
        on its connection from then on."""
        with self._lock:
            self._drop_request = request_contains

    def drop_reply_containing(self, marker: bytes) -> None:
        """Swallow the first reply holding ``marker``, and all later replies on its connection."""
        with self._lock:
            self._drop_reply = marker

    # forwarding -----------------------------------------------------------------------------
    def forward(self, pipe: _Pipe, dst: socket.socket, data: bytes, up: bool) -> None:
        reset = False
        with self._lock:
            delay = self._delay_s
            if up:
                self.bytes_up += len(data)
                if self._drop_request is not None and self._drop_request in data:
                    self._drop_request = None
                    pipe.swallow = True
                    self.dropped += 1
                if self._reset_at is not None and self.bytes_up >= self._reset_at:
                    self._reset_at = None
                    reset = True
            else:
                self.bytes_down += len(data)
                if self._drop_reply is not None and self._drop_reply in data:
                    self._drop_reply = None
                    pipe.swallow = True
                    self.dropped += 1
        if delay:
            time.sleep(delay)
        if not (pipe.swallow and not up):
            dst.sendall(data)
        if reset:
            self.reset()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _rst(client)  # the server is down: the client sees its connection refused
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(self, client, server)
            with self._lock:
                self._pipes.add(pipe)
                self.accepted += 1
            pipe.start()
