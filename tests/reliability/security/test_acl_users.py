"""The least-privilege ACL users of docs/security.md do their whole job, and nothing else.

The block of docs/security.md that creates ``chi-publisher``, ``chi-worker`` and
``chi-operator`` runs as written (bash, ``redis-cli``) against a redis-server of this module.
Then, once for the module (:func:`job`), with MONITOR recording every command:

- the publisher publishes one event, one with an idempotency key, and a batch;
- a worker process (``proc_acl``) run as the worker user consumes and acks, retries and
  dead-letters a failing event (one subscription, and a batch subscription whose batch is
  settled by a script), refreshes the lease of a slow handler, and, after the process died
  on an event, reclaims it in the restarted process; its log shows no NOPERM;
- the operator runs the CLI: dlq list/redrive/purge, replay to a subscription and onto the
  topics (with a checkpoint), stats, subscriptions list, retention apply, events list,
  doctor; and the event store's paging and delete.

Every user gets NOPERM for FLUSHALL, CONFIG, KEYS, DEBUG and any key outside the namespace,
and the publisher for the subscriptions' keys.  Every command a Lua script ran touched only
keys the script was given in KEYS (checked against ``COMMAND GETKEYS``), and the workload
ran every script of chi_redis/backend/lua.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from support import dlq_len, drained, wait_until
from support.processes import ROOT, WorkerProcess, wait_ready, worker_env
from support.servers import RedisServer
from support.skips import skip_or_fail

from chi_redis import Event, EventBus
from chi_redis.backend.connection import connect
from chi_redis.backend.scripts import script
from chi_redis.cli.main import cli

pytestmark = pytest.mark.redis

NS = "chi"
PASSWORDS = {"chi-publisher": "pub-Secret-1", "chi-worker": "wrk-Secret-2",
             "chi-operator": "op-Secret-3"}
LUA = sorted(p.stem for p in (ROOT / "chi_redis" / "backend" / "lua").glob("*.lua"))
_MARK = "test_acl_users.py runs this very block"


def acl_block() -> str:
    """The shell block of docs/security.md that creates the users."""
    text = (ROOT / "docs" / "security.md").read_text()
    m = re.search(r"<!-- not run: [^\n]*" + re.escape(_MARK) + r"[^\n]*-->\n```sh\n(.*?)\n```",
                  text, re.S)
    assert m, "docs/security.md: the ACL block (marked for this test) is gone"
    return m.group(1)


def user_url(server: RedisServer, user: str) -> str:
    return f"redis://{user}@127.0.0.1:{server.port}/0"


def user_client(server: RedisServer, user: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, username=user,
                       password=PASSWORDS[user], socket_timeout=10)


_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b"}


def unrepr(text: str) -> bytes:
    """One argument as MONITOR quotes it (``sdscatrepr``), back to its bytes."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x":
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt.encode())
            i += 2
            continue
        out += text[i].encode()
        i += 1
    return bytes(out)


class Monitor:
    """MONITOR in a thread: each EVAL/EVALSHA with the commands its script ran."""

    _ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
    END = b"acl-test-end"

    def __init__(self, server: RedisServer) -> None:
        self.conn = server.client(socket_timeout=None).connection_pool.get_connection()
        self.conn.send_command("MONITOR")
        assert self.conn.read_response() in (b"OK", "OK")
        self.calls: list[tuple[list[bytes], list[list[bytes]]]] = []
        self.stray: list[list[bytes]] = []
        self.ended = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(redis.ConnectionError, OSError, ValueError):
            while True:
                line = self.conn.read_response()
                self._line(line.decode() if isinstance(line, bytes) else str(line))

    def _line(self, line: str) -> None:
        head, _, rest = line.partition("] ")
        args = [unrepr(a) for a in self._ARG.findall(rest)]
        if not args:
            return
        if head.endswith(" lua"):  # Redis feeds MONITOR the EVAL first, then the script's commands
            if self.calls:
                self.calls[-1][1].append(args)
            else:
                self.stray.append(args)
        elif args[0].upper() in (b"EVAL", b"EVALSHA"):
            self.calls.append((args, []))
        elif args == [b"ECHO", self.END]:
            self.ended = True

    def stop(self) -> None:
        self.conn.disconnect()
        self._thread.join(timeout=10)


@dataclass
class Job:
    server: RedisServer
    admin: redis.Redis
    monitor: Monitor
    worker_log: str = ""
    cli: dict[str, tuple[int, str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # DEBUG enabled, so that the ACL is what refuses it
    server = RedisServer(tmp_path_factory.mktemp("acl-redis"), "--enable-debug-command",
                         "yes").start()
    try:
        if shutil.which("redis-cli") is None:
            skip_or_fail("no redis-cli to run the ACL block of docs/security.md with")
        env = {"PATH": os.environ["PATH"], "REDIS_PORT": str(server.port),
               **{f"CHI_{u.split('-')[1].upper()}_PASSWORD": p for u, p in PASSWORDS.items()}}
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", acl_block()], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.split() == ["OK"] * 3, out.stdout + out.stderr
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def job(acl_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    admin = acl_server.client()
    monitor = Monitor(acl_server)
    result = Job(acl_server, admin, monitor)
    try:
        _publish(acl_server)
        result.worker_log = _work(acl_server, admin, tmp_path_factory.mktemp("acl-worker"))
        result.cli = _operate(acl_server)
        admin.echo(Monitor.END)
        wait_until(lambda: monitor.ended, 30, "MONITOR read everything")
    finally:
        monitor.stop()
    yield result
    admin.close()


def _publish(server: RedisServer) -> None:
    bus = EventBus(connect(user_url(server, "chi-publisher"),
                           password=PASSWORDS["chi-publisher"]), namespace=NS)
    bus.publish(Event(type="acl.ok", data={"n": 0}))
    bus.publish(Event(type="acl.ok", data={"n": 1}), idempotency_key="order-1")
    bus.publish(Event(type="acl.ok", data={"n": 1}), idempotency_key="order-1")
    bus.publish_batch([Event(type="other.ok", data={"n": i}) for i in range(3)])
    bus.declare_topic("aclp", partitions=2, key="data.k")  # a partitioned topic (§15)
    bus.publish_batch([Event(type="aclp.ok", data={"k": f"k{i}"}) for i in range(6)])
    bus.client.close()


def _work(server: RedisServer, admin: redis.Redis, tmp: Path) -> str:
    """A worker process of the worker user handles ok, failing, slow and crashing events."""
    env = worker_env(user_url(server, "chi-worker"), NS, ACL_TEST_DIR=str(tmp),
                     CHI_REDIS_PASSWORD=PASSWORDS["chi-worker"])
    w = WorkerProcess("reliability.security.proc_acl", env, tmp / "worker.log", threads=2)
    w.start().supervise(max_restarts=3)
    try:
        wait_ready(w)
        watch = EventBus(admin, namespace=NS)
        wait_until(lambda: admin.hlen(watch.keys.subs()) == 3, 60, "subscriptions registered")
        pub = EventBus(user_client(server, "chi-publisher"), namespace=NS)
        pub.publish_batch([Event(type="acl.ok", data={}), Event(type="acl.fail", data={}),
                           Event(type="acl.slow", data={"sleep_ms": 2500})])
        pub.publish(Event(type="acl.crash", data={}))
        try:
            wait_until(lambda: dlq_len(admin, watch, "acl-one") >= 1
                       and dlq_len(admin, watch, "acl-batch") >= 1
                       and drained(admin, watch, "acl-one", ["acl"])
                       and drained(admin, watch, "acl-batch", ["acl"])
                       and drained(admin, watch, "acl-part", ["aclp/0", "aclp/1"]), 120,
                       "the worker user's job done", interval=0.2)
        except AssertionError as exc:
            state = {s: (dlq_len(admin, watch, s), drained(admin, watch, s, ["acl"]))
                     for s in ("acl-one", "acl-batch")}
            raise AssertionError(f"{exc}: {state}; worker log:\n{w.output()[-3000:]}") from None
        assert w.starts >= 2, "the crash event did not kill the first worker process"
    finally:
        w.stop()
    return w.output()


def _operate(server: RedisServer) -> dict[str, tuple[int, str]]:
    env = {"CHI_REDIS_URL": user_url(server, "chi-operator"), "CHI_NAMESPACE": NS,
           "CHI_REDIS_PASSWORD": PASSWORDS["chi-operator"], "CHI_CONFIG": ""}
    runner = CliRunner()
    out: dict[str, tuple[int, str]] = {}
    for args in ("dlq list acl-one", "dlq redrive acl-one --all", "dlq purge acl-batch --yes",
                 "replay --topic acl --to acl-one", "replay --topic acl --republish"
                 " --checkpoint acl-cp", "stats", "subscriptions list",
                 "retention apply --max-len 100", "events list --topic acl",
                 "tail acl --from -1d --count 1", "doctor"):
        r = runner.invoke(cli, shlex.split(args), env=env)
        out[args] = (r.exit_code, r.output)
    bus = EventBus(user_client(server, "chi-operator"), namespace=NS)
    events = bus.store.load_by_topic("acl", offset=1, limit=2)  # page.lua
    assert bus.store.delete(events[0].id)  # delete.lua
    bus.client.close()
    return out


def test_the_worker_user_consumes_acks_retries_reclaims_and_dead_letters(job: Job) -> None:
    assert "NOPERM" not in job.worker_log and "permission" not in job.worker_log.lower()
    assert "reclaim" in job.worker_log.lower()


def test_the_operator_user_runs_the_cli(job: Job) -> None:
    for args, (code, output) in job.cli.items():
        output = output.replace("CONFIG GET is not allowed (NOPERM)", "")  # doctor: expected
        assert "NOPERM" not in output and "permission denied" not in output, (args, output)
        assert code == (1 if args == "doctor" else 0), (args, output)  # doctor: findings
    assert "redriven " in job.cli["dlq redrive acl-one --all"][1]
    assert "replayed " in job.cli["replay --topic acl --to acl-one"][1]
    assert "acl-one" in job.cli["subscriptions list"][1]
    assert "acl." in job.cli["tail acl --from -1d --count 1"][1]
    doctor = job.cli["doctor"][1]  # CONFIG GET is not granted: doctor reads INFO instead
    assert "OK    version" in doctor and "maxmemory-policy noeviction" in doctor, doctor
    assert "CONFIG GET is not allowed (NOPERM)" in doctor, doctor


@pytest.mark.parametrize("user", sorted(PASSWORDS))
def test_each_user_is_refused_what_is_not_its_job(acl_server: RedisServer, user: str) -> None:
    c = user_client(acl_server, user)
    refused: list[tuple[Any, ...]] = [
        ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"), ("ACL", "LIST"), ("SHUTDOWN",), ("CLIENT", "KILL", "ID", "1"),
        ("MONITOR",),
        ("GET", "other:key"), ("SET", "other:key", "1"),
        ("XADD", "other:{t}:stream", "*", "a", "b"), ("XADD", "chi2:{t}:stream", "*", "a", "b"),
        ("EVAL", "return redis.call('SET', 'other:key', '1')", "0"),
        ("EVALSHA", script("publish_one").sha, "3", "other:{t}:stream", "other:{t}:ts",
         "other:{t}:ids", "i", "t", "1", "1", "{}", "mp", "d"),
    ]
    if user == "chi-publisher":
        refused += [("XADD", f"{NS}:q:{{sub}}:dlq", "*", "a", "b"),
                    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", f"{NS}:{{t}}:stream", ">"),
                    ("XTRIM", f"{NS}:{{t}}:stream", "MAXLEN", "0"), ("DEL", f"{NS}:{{t}}:ids")]
    if user == "chi-worker":
        refused += [("XTRIM", f"{NS}:{{t}}:stream", "MAXLEN", "0"), ("SCAN", "0")]
    try:
        for command in refused:
            with pytest.raises(redis.exceptions.ResponseError) as refusal:
                c.execute_command(*command)
            assert _no_permission(refusal.value), (command, refusal.value)
        assert c.ping()  # the user itself works
    finally:
        c.close()


def _no_permission(exc: Exception) -> bool:
    # a script's own refusal comes back as a script error ("can't access", "no permissions")
    text = str(exc)
    return isinstance(exc, redis.exceptions.NoPermissionError) or "can't access" in text or (
        "NOPERM" in text)


def _keys_of(admin: redis.Redis, args: list[bytes]) -> set[bytes]:
    try:
        return {k if isinstance(k, bytes) else k.encode() for k in admin.command_getkeys(*args)}
    except redis.ResponseError:  # TIME and the like: no key
        return set()


def test_every_script_touches_only_the_keys_it_declares(job: Job) -> None:
    by_sha = {script(name).sha_bytes: name for name in LUA}
    ran: set[str] = set()
    assert not job.monitor.stray, job.monitor.stray[:3]
    for args, inner in job.monitor.calls:
        sha = args[1] if args[0].upper() == b"EVALSHA" else hashlib.sha1(args[1]).hexdigest()
        name = by_sha.get(sha if isinstance(sha, bytes) else sha.encode(), "another script")
        declared = set(args[3:3 + int(args[2])])
        if inner:
            ran.add(name)
        for command in inner:
            touched = _keys_of(job.admin, command)
            assert touched <= declared, f"{name}: {command[0]!r} touched {touched - declared}"
            assert all(k.startswith(f"{NS}:".encode()) for k in touched), (name, touched)
    assert ran >= set(LUA), f"scripts not run: {set(LUA) - ran} {len(job.monitor.calls)}"
