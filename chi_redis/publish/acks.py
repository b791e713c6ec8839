"""``acks="replicas"``: publishing that returns once the writes reached N replicas.

Redis replication is asynchronous: a master answers a write before its replicas have it,
and a master that fails before they copied it loses the write when a replica is promoted
(docs/design.md §3.4).  ``WAIT numreplicas timeout`` blocks until the replicas have
acknowledged every write *the same connection* made, so it is sent on the connection
that ran the publish scripts, right behind them in the same round trip: on a single node
a connection of the client's pool, on a cluster one of the pool of the master that owns
each call's slot (the calls of one master share a connection and one WAIT).  Neither
redis-py's command layers nor the single publish's kept connection
(:class:`~chi_redis.backend.scripts.DirectConnection`) can be used: the first hands each
command a connection of its own choosing, the second is shared with the fast path.

An event already written (a retry after a lost reply, an event published again after a
NotReplicatedError) makes the script write nothing, and ``WAIT`` only covers writes of its
own connection: so behind the calls of each connection goes one more small write, the
first event's id lookup set again to its own value (``HSET`` always replicates), which
brings the connection's replication offset past every earlier write of that master.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import hiredis
import redis.exceptions as rex

from ..backend.cluster import is_cluster
from ..backend.scripts import Script
from ..errors import ChiError, NotReplicatedError, ValidationError
from ..events.event import Event
from ..limits import check_limit
from .packing import Call

if TYPE_CHECKING:
    from .writer import Writer

__all__ = ["AckMode", "AckedSend", "Acks", "acks_of", "call_acks", "not_replicated",
           "write_acked", "write_batch_acked"]

AckMode = Literal["master", "replicas"]
_pack: Any = hiredis.pack_command
#: Most replicas one can ask for, and the longest WAIT (ms): the read of its reply must
#: not outlast the client's socket timeout by much (it is given this plus a margin).
MAX_REPLICAS = 100
MAX_ACK_TIMEOUT_MS = 60_000
#: Cluster refusals that mean the call did not run and the slot map changed (or is
#: changing): the topology is read again and the refused calls sent again, this often.
_REFUSED = (rex.MovedError, rex.AskError, rex.TryAgainError, rex.ClusterDownError)
_REROUTES = 5
#: Sets a field of a hash to its own value: a write that replicates, changing nothing.
_TOUCH = (b"local v = redis.call('HGET', KEYS[1], ARGV[1]) "
          b"if v then redis.call('HSET', KEYS[1], ARGV[1], v) end return 0")


@dataclass(frozen=True)
class Acks:
    """How many replicas must confirm a write (``min_replicas``) and for how long the
    publisher waits for them (``timeout_ms``)."""

    min_replicas: int = 1
    timeout_ms: int = 1_000


def acks_of(mode: object, min_replicas: object, timeout_ms: object) -> Acks | None:
    """The checked settings of ``acks=mode``; None for ``"master"`` (no waiting)."""
    if mode not in ("master", "replicas"):
        raise ValidationError(f"acks must be 'master' or 'replicas', got {mode!r}",
                              field="acks")
    replicas = check_limit(min_replicas, "min_replicas", 1, MAX_REPLICAS)
    timeout = check_limit(timeout_ms, "ack_timeout_ms", 1, MAX_ACK_TIMEOUT_MS)
    return Acks(replicas, timeout) if mode == "replicas" else None


def call_acks(mode: object, default: Acks | None, replicas: Acks) -> Acks | None:
    """The acks of one publish call on a bus: ``mode`` None keeps the bus's ``default``,
    ``"replicas"`` waits with the bus's replica settings, ``"master"`` waits for none
    (anything else is refused)."""
    if mode is None:
        return default
    if mode == "replicas":
        return replicas
    acks_of(mode, 1, 1)  # refuses anything but "master"
    return None


class AckedBase:
    """One round of publish-script ``calls`` followed by ``WAIT``, for the writer's retry
    policy to call (each call is one attempt): ``results`` and ``replicas`` (the WAIT
    reply that covers each call) are set when an attempt returns.  The I/O is
    :class:`AckedSend`'s (sync) or ``acks_aio.AsyncAckedSend``'s."""

    def __init__(self, client: Any, script: Script, calls: Sequence[Call], acks: Acks) -> None:
        self.client = client
        self.script = script
        self.calls = list(calls)
        self.acks = acks
        self.results: list[Any] = [None] * len(self.calls)
        self.replicas: list[int] = [0] * len(self.calls)
        #: ``host:port`` of the master each call ran on (for the error's text).
        self.masters: list[str] = [""] * len(self.calls)
        self.wait = _pack((b"WAIT", acks.min_replicas, acks.timeout_ms))
        self.load = _pack((b"SCRIPT", b"LOAD", script.source))

    def by_node(self, todo: list[int]) -> list[tuple[Any, list[int]]]:
        """The calls ``todo`` grouped by the cluster node that owns their slot."""
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i in todo:
            node = self.client.get_node_from_key(self.calls[i][0][0])
            groups.setdefault(node.name, (node, []))[1].append(i)
        return list(groups.values())

    def packed(self, idx: list[int]) -> tuple[list[bytes], bytes]:
        """The EVALSHAs of the calls ``idx`` and the touch that goes behind them."""
        return [self.script.packed(*self.calls[i]) for i in idx], _touch(self.calls[idx[0]])

    def read_timeout(self, conn: Any) -> float:
        """How long the WAIT's reply may take: its timeout and the socket's."""
        return self.acks.timeout_ms / 1000 + max(conn.socket_timeout or 0, 5.0)

    def settle(self, idx: list[int], results: list[Any], replicas: int, kw: Any) -> list[int]:
        """Record the replies of the calls ``idx`` (sent to the node of connection settings
        ``kw``); the indexes a cluster refused (not run).  Other error replies are raised."""
        master = f"{kw.get('host', '?')}:{kw.get('port', '')}"
        refused = []
        for n, i in enumerate(idx):
            self.results[i] = results[n]
            self.replicas[i] = replicas
            self.masters[i] = master
            if isinstance(results[n], _REFUSED):
                refused.append(i)
            elif isinstance(results[n], Exception):
                raise results[n]
        return refused


def missing(results: list[Any]) -> list[int]:
    """Positions of the replies that say NOSCRIPT (those calls did not run)."""
    return [n for n, r in enumerate(results) if isinstance(r, rex.NoScriptError)]


def wait_refused(results: list[Any], exc: rex.ResponseError) -> int:
    """The WAIT reply to use when the node refused WAIT: a node that is no master (any
    more) refuses it, and (on a cluster) has refused the calls with MOVED too, which are
    then sent again where they belong; else the refusal is raised."""
    if all(isinstance(r, _REFUSED) for r in results):
        return 0
    raise exc from None


def reroute_pause(attempt: int, refused: list[int], results: list[Any]) -> float:
    """Seconds to wait before calls a cluster refused go out again; the first refusal is
    raised once :data:`_REROUTES` rounds were refused."""
    if attempt == _REROUTES:
        raise results[refused[0]]
    return float(0.05 * 2**attempt)


def _touch(call: Call) -> bytes:
    """The first event's id lookup of ``call`` set again to its value (module doc).

    The layout is ``lua/publish.lua``'s: KEYS[3] is the first topic's id hash, ARGV[3] the
    number of topics, and the first event's id follows the topic names and its topic
    slot."""
    keys, argv = call
    first_id = argv[6 + int(argv[2]) + 1]
    touch: bytes = _pack((b"EVAL", _TOUCH, 1, keys[2], first_id))
    return touch


class AckedSend(AckedBase):
    """:class:`AckedBase` on a synchronous client (a plain one or a ``RedisCluster``)."""

    def __call__(self) -> list[Any]:
        if is_cluster(self.client):
            self._on_cluster()
        else:
            self._on_node(self.client.connection_pool, list(range(len(self.calls))))
        return self.results

    def _on_cluster(self) -> None:
        todo = list(range(len(self.calls)))
        for attempt in range(_REROUTES + 1):
            refused: list[int] = []
            try:
                for node, idx in self.by_node(todo):
                    refused += self._on_node(node.redis_connection.connection_pool, idx)
            except (rex.ConnectionError, rex.TimeoutError):
                self._reload_topology()  # a master gone: the retry policy tries again
                raise
            if not refused:
                return
            pause = reroute_pause(attempt, refused, self.results)
            self._reload_topology()
            time.sleep(pause)
            todo = refused

    def _reload_topology(self) -> None:
        with contextlib.suppress(rex.RedisError, OSError):
            self.client.nodes_manager.initialize()

    def _on_node(self, pool: Any, idx: list[int]) -> list[int]:
        """Send the calls ``idx``, the touch and a WAIT on one connection of ``pool``."""
        packed, touch = self.packed(idx)
        conn = pool.get_connection()
        try:
            results, replicas = self._exchange(conn, packed, touch)
            lost = missing(results)
            if lost:  # not run: load the script on this node and send those again
                conn.send_packed_command([self.load])
                conn.read_response()
                again, replicas = self._exchange(conn, [packed[n] for n in lost], touch)
                for n, r in zip(lost, again, strict=True):
                    results[n] = r
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return self.settle(idx, results, replicas, pool.connection_kwargs)

    def _exchange(
        self, conn: Any, packed: list[bytes], touch: bytes
    ) -> tuple[list[Any], int]:
        """Write ``packed``, ``touch`` and a WAIT at once; every reply read (error replies
        of ``packed`` kept in the list)."""
        conn.send_packed_command([*packed, touch, self.wait])
        results: list[Any] = []
        for _ in packed:
            try:
                results.append(conn.read_response())
            except rex.ResponseError as exc:
                results.append(exc)
        with contextlib.suppress(rex.ResponseError):  # read in any case: the WAIT follows
            conn.read_response()
        try:
            return results, int(conn.read_response(timeout=self.read_timeout(conn)))
        except rex.ResponseError as exc:
            return results, wait_refused(results, exc)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def write_acked(
    writer: Writer, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None,
    acks: Acks,
) -> list[str]:
    """:meth:`Writer.write` with ``acks="replicas"``: the stream ids once the replicas
    confirmed them; :class:`NotReplicatedError` when too few did within the timeout."""
    from .writer import count_published

    calls = writer.pack_runs(events, idempotency_keys, False)
    writer.register(e.topic for e in events)
    send = AckedSend(writer.client, writer.script, calls, acks)
    writer.call(send)
    ids, unconfirmed, master = outcome(send, 0)
    count_published(e.topic for e in events)
    if unconfirmed:
        raise not_replicated(ids, unconfirmed, acks, [], master)
    return ids


def write_batch_acked(
    writer: Writer, events: list[Event], chunk_size: int, acks: Acks
) -> list[str]:
    """:meth:`Writer.write_batch` with ``acks="replicas"``: each round trip's calls are
    followed by WAIT; the first round trip not confirmed ends the batch with
    :class:`NotReplicatedError` (its events written, the later ones not sent)."""
    from .writer import count_published

    out: list[str] = []
    rounds = writer.rounds(events, chunk_size, False)
    try:
        writer.register(e.topic for e in events)
    except ChiError as exc:
        raise writer.failure(events, out, exc) from exc
    for group in rounds:
        send = AckedSend(writer.client, writer.script, group, acks)
        try:
            writer.call(send)
        except ChiError as exc:
            raise writer.failure(events, out, exc) from exc
        ids, unconfirmed, master = outcome(send, len(out))
        count_published(e.topic for e in events[len(out):len(out) + len(ids)])
        out += ids
        if unconfirmed:
            raise not_replicated(out, unconfirmed, acks, list(range(len(out), len(events))),
                                 master)
    return out


def outcome(send: AckedBase, start: int) -> tuple[list[str], dict[int, int], str]:
    """The stream ids of ``send``'s calls, the events (index from ``start``) whose call's
    WAIT saw too few replicas with that count, and the master of the first of them."""
    ids: list[str] = []
    unconfirmed: dict[int, int] = {}
    master = ""
    for result, replicas, where in zip(send.results, send.replicas, send.masters, strict=True):
        sids = [_str(s) for s in (result if isinstance(result, list) else [result])]
        if replicas < send.acks.min_replicas:
            master = master or where
            for n in range(len(sids)):
                unconfirmed[start + len(ids) + n] = replicas
        ids += sids
    return ids, unconfirmed, master


def not_replicated(
    ids: list[str], unconfirmed: dict[int, int], acks: Acks, failed: list[int], master: str
) -> NotReplicatedError:
    """The error for written events (``ids``: all written so far, by index) of which
    ``unconfirmed`` (index → replicas that confirmed) did not reach ``min_replicas``."""
    fewest = min(unconfirmed.values())
    one = len(ids) == 1 and not failed
    what = "the event was" if one else f"{len(unconfirmed)} of {len(ids)} written events were"
    where = "it is in its stream" if one else "they are in their streams"
    them = "it replicates may lose it" if one else "they replicate may lose them"
    rest = f"; {len(failed)} later events were not sent" if failed else ""
    return NotReplicatedError(
        f"{what} written on the master {master} but confirmed by only {fewest} of the"
        f" {acks.min_replicas} required replicas within {acks.timeout_ms} ms (WAIT): {where}"
        f" and will be delivered, but a failover of that master before {them}{rest}",
        written=dict(enumerate(ids)), failed=failed, unconfirmed=sorted(unconfirmed),
        replicas=unconfirmed, required=acks.min_replicas,
    )
