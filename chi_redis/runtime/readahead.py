"""A pipeline sent now, its replies read later: the consumer's read-ahead.

When a read returned a backlog, the consumer sends the next read (with the acks buffered
so far) before it hands the entries out, and reads its replies only when it needs entries
again.  Redis answers while the worker threads run the entries already handed out; without
it they sat idle for every round trip (docs/benchmarks.md, end to end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

if TYPE_CHECKING:
    from .leases import AckBuffer

__all__ = ["ReadAhead", "SentPipeline"]

_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)


class ReadAhead:
    """At most one read of a consumer sent ahead, and the acks it carries."""

    def __init__(self, acks: AckBuffer) -> None:
        self._acks = acks
        self._sent: tuple[SentPipeline, dict[str, list[bytes]]] | None = None

    def __bool__(self) -> bool:
        return self._sent is not None

    def send(self, pipe: Any, acks: dict[str, list[bytes]]) -> None:
        """Send ``pipe`` (which carries ``acks``); if it cannot be sent, the acks go back to
        the buffer and the next read sends them (redis-py retrying it)."""
        try:
            self._sent = (SentPipeline(pipe), acks)
        except _CONNECTION_ERRORS:
            self._acks.restore(acks)

    def replies(self) -> list[Any]:
        """The replies of the read sent ahead.  On a connection error its acks go back to the
        buffer; what it read, if it ran, stays pending until the lease expires (reclaimed)."""
        if self._sent is None:
            raise RuntimeError("no read was sent ahead")
        (sent, acks), self._sent = self._sent, None
        try:
            return sent.replies()
        except _CONNECTION_ERRORS:
            self._acks.restore(acks)
            raise


class SentPipeline:
    """The commands queued on ``pipe`` (not a transaction), sent at once on a connection of
    its client's pool, which is held until :meth:`replies` or :meth:`discard`.

    As redis-py does, a connection that failed in any other way than an error reply is
    disconnected; unlike ``pipe.execute()`` nothing is retried: the caller decides.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.commands = list(pipe.command_stack)
        self.pool = pipe.connection_pool
        conn = self.pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands([args for args, _ in self.commands]))
        except BaseException:
            conn.disconnect()
            self.pool.release(conn)
            raise
        self.conn: Any = conn

    def replies(self) -> list[Any]:
        """Every command's reply, in order; an error reply is returned, not raised (as
        ``execute(raise_on_error=False)``).  Raises redis-py's connection errors."""
        conn, self.conn = self.conn, None
        if conn is None:
            raise rex.ConnectionError("the replies were read or discarded already")
        out: list[Any] = []
        try:
            for args, options in self.commands:
                try:
                    out.append(self.pipe.parse_response(conn, args[0], **options))
                except rex.ResponseError as exc:
                    out.append(exc)
        except BaseException:
            conn.disconnect()  # replies left on the socket: never hand it to another caller
            raise
        finally:
            self.pool.release(conn)
        return out

    def discard(self) -> None:
        """Drop the connection with the replies unread (it reconnects at its next use)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)
