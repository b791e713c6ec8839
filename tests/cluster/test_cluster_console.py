"""The web console on a local Redis Cluster (docs/design.md §3.4): its pages read the same
numbers as the CLI with the topics on all three masters, and its actions (redrive, purge,
replay) do what the CLI's do; ``chi-redis console`` given one node's URL serves them too."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from support.cluster import LocalCluster, spread_topics
from support.ports import free_port
from support.processes import ROOT, clean_env
from support.runtime import in_process_runtime
from support.waiting import wait_until

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli
from chi_redis.console.app import Console, create_app
from chi_redis.console.security import Credentials
from chi_redis.ops.checkpoint import list_checkpoints
from chi_redis.runtime.encoder import decode_message

pytestmark = pytest.mark.redis

CHI = ROOT / ".venv" / "bin" / "chi-redis"
TOKEN = "cluster-console-token"


@pytest.fixture
def tc(cbus: EventBus) -> Iterator[tuple[Console, TestClient]]:
    """A console on the cluster bus (a credential, so actions are allowed) and its client."""
    console = Console(cbus, Credentials(token=TOKEN), redact_fields=["card"])
    with TestClient(create_app(console, sample=False), follow_redirects=False) as client:
        yield console, client


def chi_json(cluster: LocalCluster, ns: str, *args: str) -> list[Any]:
    """``chi-redis --json ARGS`` given the second node's URL: its JSON lines."""
    done = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None}
                     ).invoke(chi_cli, ["--redis-url", cluster.nodes[1].url, "--namespace", ns,
                                        "--json", *args], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def columns(page: str, sub: str) -> dict[str, str]:
    """``sub``'s overview row: lag, pending, queued, delayed and dead letters, as shown."""
    row = re.search(rf'<tr[^>]*data-sub="{re.escape(sub)}">(.*?)</tr>', page, re.S)
    assert row, f"no row of {sub}"
    tds = [re.sub(r"<[^>]+>", "", td).strip()
           for td in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
    return dict(zip(("lag", "pending", "queued", "delayed", "dead_letters"),
                    [tds[1], tds[2], tds[4], tds[5], tds[6]], strict=True))


def page_sparks(page: str) -> int:
    """How many charts on ``page`` have points (two samples or more)."""
    return page.count('aria-label="last ')


def cell(page: str, sub: str, col: str) -> str:
    return columns(page, sub)[col]


def csrf_of(client: TestClient, page: str) -> str:
    """Load ``page`` and return the CSRF token its forms carry."""
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found, "no CSRF token on " + page
    return found.group(1)


def login(client: TestClient) -> None:
    done = client.post("/login", data={"csrf": csrf_of(client, "/login"), "user": "",
                                       "password": TOKEN, "next": "/"})
    assert done.status_code == 303, done.text


def queued_ids(bus: EventBus, sub: str) -> Counter[str]:
    """The event ids in ``sub``'s private stream (where a replay delivers), counted."""
    return Counter(decode_message(f[b"m"]).args[1]["id"].decode()
                   for _, f in bus.client.xrange(bus.keys.queue(sub)))


def spread(bus: EventBus, cluster: LocalCluster, prefix: str) -> list[str]:
    topics = spread_topics(cluster, bus.keys.stream, prefix)
    assert len({cluster.owner(bus.keys.stream(t)) for t in topics}) == 3
    return topics


def register(bus: EventBus, monkeypatch: pytest.MonkeyPatch, name: str, topics: list[str],
             **kw: Any) -> None:
    """The subscription's record and groups, as a worker leaves them (no worker runs)."""
    with in_process_runtime(bus, monkeypatch) as rt:
        bus.subscribe(name, topics=topics, start="earliest", **kw)(lambda e: None)
        rt.broker()


def test_overview_and_subscription_page_match_the_cli_on_three_masters(
    cbus: EventBus, redis_cluster: LocalCluster, tc: tuple[Console, TestClient],
    monkeypatch: pytest.MonkeyPatch, ns: str,
) -> None:
    topics = spread(cbus, redis_cluster, "co")
    register(cbus, monkeypatch, "c-lag", topics)
    register(cbus, monkeypatch, "c-read", topics[:2])
    sids = cbus.publish_batch([Event(type="co.made", topic=topics[i % 3], data={"i": i})
                               for i in range(12)])
    # c-read: worker-a reads topic 0's four entries, worker-b takes one over (2 deliveries).
    s0 = cbus.keys.stream(topics[0])
    cbus.client.xreadgroup("c-read", "worker-a", {s0: ">"})
    cbus.client.xclaim(s0, "c-read", "worker-b", 0, [sids[0]])
    console, client = tc
    page = client.get("/").text
    [stats] = chi_json(redis_cluster, ns, "stats")
    by_name = {s["name"]: s for s in stats["subscriptions"]}
    assert by_name["c-lag"]["lag"] == 12 and by_name["c-read"]["lag"] == 4
    assert by_name["c-read"]["pending"] == 4
    for name in ("c-lag", "c-read"):
        assert columns(page, name) == {k: str(by_name[name][k]) for k in (
            "lag", "pending", "queued", "delayed", "dead_letters")}, name
    for t in stats["topics"]:  # every master's topic, with its length
        assert re.search(rf'>{re.escape(t["topic"])}</a></td>\s*<td class="num">'
                         rf'{t["length"]}</td>', page), t
    assert sorted(t["topic"] for t in stats["topics"]) == sorted(topics)
    assert "c-lag</a>: no consumer alive, 12 waiting" in page.split("<h2>Subscriptions")[0]
    assert cell(client.get("/partials/overview").text, "c-lag", "lag") == "12"
    # The charts: entries added per topic between two samples (one XINFO per master).
    console.sampler.take()
    cbus.publish_batch([Event(type="co.made", topic=t, data={}) for t in topics * 2])
    console.sampler.take()
    assert [s.added for s in console.sampler.history()] == [
        dict.fromkeys(topics, 4), dict.fromkeys(topics, 6)]
    assert set(console.sampler.rates()) == set(topics)
    console.sampler.take()  # a chart needs two rates: three samples
    assert page_sparks(client.get("/").text) == 3 + 2  # three topics, two subscriptions

    sub = client.get("/subscriptions/c-read").text
    assert "worker-a" in sub and "worker-b" in sub
    row = re.search(rf"<tr><td>{topics[0]}</td>\s*<td><a [^>]*>{sids[0]}</a></td>(.*?)</tr>",
                    sub, re.S)
    assert row and "worker-b" in row.group(1)
    assert row.group(1).rstrip().endswith('<td class="num">2</td>')
    # Rewound from the page: c-lag's groups on all three masters, back to the start.
    for t in topics:
        cbus.client.xgroup_setid(cbus.keys.stream(t), "c-lag", "$")
    assert chi_json(redis_cluster, ns, "stats")[0]["subscriptions"][0]["lag"] == 0
    login(client)
    done = client.post("/subscriptions/c-lag/rewind", data={
        "csrf": csrf_of(client, "/subscriptions/c-lag"), "to": "0-0", "confirmed": "yes",
        "force": "yes"})
    assert done.status_code == 303, done.text
    assert all(t in done.headers["location"] for t in topics)
    rewound = {s["name"]: s for s in chi_json(redis_cluster, ns, "stats")[0]["subscriptions"]}
    assert rewound["c-lag"]["lag"] == 18
    [shown] = chi_json(redis_cluster, ns, "subscriptions", "show", "c-read")
    assert {c["name"] for c in shown["consumers"]} == {"worker-a", "worker-b"}
    assert sorted((p["stream_id"], p["consumer"], p["deliveries"]) for p in shown["pending"]) \
        == sorted([(sids[0], "worker-b", 2)] + [(s, "worker-a", 1) for s in sids[3:12:3]])


def test_dead_letters_list_show_redrive_and_purge(
    cbus: EventBus, redis_cluster: LocalCluster, tc: tuple[Console, TestClient],
    monkeypatch: pytest.MonkeyPatch, ns: str,
) -> None:
    topics = spread(cbus, redis_cluster, "cd")
    handled: Counter[str] = Counter()
    lock = threading.Lock()
    broken = {"on": True}

    @cbus.subscribe("c-pay", topics=topics, start="earliest", max_retries=0)
    def pay(event: Event) -> None:
        if broken["on"]:
            raise RuntimeError("card processor refused: password=hunter2")
        with lock:
            handled[event.id] += 1

    events = [Event(type="cd.pay", topic=topics[i % 3], data={"i": i, "card": "4111-1111"})
              for i in range(3)]
    _, client = tc
    with in_process_runtime(cbus, monkeypatch) as rt:
        rt.worker(rt.broker())
        cbus.publish_batch(events)
        wait_until(lambda: len(cbus.dead_letters("c-pay")) == 3, 60, "three dead letters")
        cli_rows = chi_json(redis_cluster, ns, "dlq", "list", "c-pay")
        listing = client.get("/deadletters/c-pay").text
        ids = [r["id"] for r in cli_rows]
        assert len(ids) == 3 and all(i in listing for i in ids)
        one = client.get(f"/deadletters/c-pay/{ids[0]}").text
        assert "RuntimeError" in one and cli_rows[0]["event_id"] in one
        assert "4111" not in one and "hunter2" not in one
        assert "c-pay" in client.get("/deadletters").text
        broken["on"] = False
        login(client)
        csrf = csrf_of(client, "/deadletters/c-pay")
        done = client.post("/deadletters/c-pay/redrive", data={"csrf": csrf, "id": ids[:2]})
        assert done.status_code == 303 and "redriven%202" in done.headers["location"]
        first_two = {r["event_id"] for r in cli_rows[:2]}
        wait_until(lambda: set(handled) == first_two, 60, "the redriven two handled")
        assert len(cbus.dead_letters("c-pay")) == 1
        done = client.post("/deadletters/c-pay/purge", data={"csrf": csrf, "confirmed": "yes"})
        assert done.status_code == 303
        assert cbus.dead_letters("c-pay") == []
        assert chi_json(redis_cluster, ns, "dlq", "list", "c-pay") == []
    assert handled == dict.fromkeys(first_two, 1)  # each redriven event handled once


def test_events_by_time_range_and_by_id_with_handled_by(
    cbus: EventBus, redis_cluster: LocalCluster, tc: tuple[Console, TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = spread(cbus, redis_cluster, "ce")
    register(cbus, monkeypatch, "c-done", topics)
    register(cbus, monkeypatch, "c-late", topics)
    now = datetime.now(UTC)
    old = [Event(type="ce.old", topic=t, data={"n": i}, timestamp=now - timedelta(hours=3))
           for i, t in enumerate(topics)]
    new = [Event(type="ce.new", topic=t, data={"n": i}) for i, t in enumerate(topics)]
    sids = cbus.publish_batch(old + new)
    _, client = tc
    for i, topic in enumerate(topics):  # each topic on its own master
        listing = client.get("/events", params={
            "topic": topic, "by": "event-time", "since": "-1h", "until": "now"}).text
        assert new[i].id in listing and old[i].id not in listing
        both = client.get("/events", params={"topic": topic, "by": "event-time",
                                             "since": "-4h"}).text
        assert new[i].id in both and old[i].id in both
        appended = client.get("/events", params={"topic": topic, "since": sids[3 + i]}).text
        assert new[i].id in appended and old[i].id not in appended  # by stream id
    # c-done handles topic 2's new event; c-late has not read anything yet.
    s2 = cbus.keys.stream(topics[2])
    cbus.client.xreadgroup("c-done", "c", {s2: ">"})
    cbus.client.xack(s2, "c-done", *sids[2::3])
    page = client.get(f"/events/{new[2].id}").text
    states = dict(re.findall(r'<tr class="state-[\w-]+"><td><a [^>]*>([\w-]+)</a></td>'
                             r"<td>([\w-]+)</td>", page))
    assert states == {"c-done": "handled", "c-late": "not-yet"}
    assert topics[2] in page
    assert client.get(f"/events/{sids[4]}", params={"topic": topics[1]}).status_code == 200
    opened = client.get("/event", params={"ref": old[0].id})
    assert opened.status_code == 303
    assert old[0].id in client.get(opened.headers["location"]).text
    assert client.get("/events/no-such-event").status_code == 404


def test_replay_dry_run_then_a_run_delivers_its_range_once(
    cbus: EventBus, redis_cluster: LocalCluster, tc: tuple[Console, TestClient],
    monkeypatch: pytest.MonkeyPatch, ns: str,
) -> None:
    topics = spread(cbus, redis_cluster, "cr")
    register(cbus, monkeypatch, "c-audit", topics, types=["cr.made"])
    events = [Event(type="cr.made" if i % 3 else "cr.other", topic=topics[i % 3],
                    data={"i": i}) for i in range(45)]
    for i in range(0, len(events), 9):
        cbus.publish_batch(events[i:i + 9])
    wanted = [e.id for e in events if e.type == "cr.made"]
    [cli_report] = chi_json(redis_cluster, ns, "replay", "--to", "c-audit", "--dry-run")
    assert cli_report["delivered"] == len(wanted) == 30
    console, client = tc
    counted = client.post("/replay/count", data={"sub": "c-audit"}).text
    assert f"would replay {len(wanted)} events into c-audit" in counted
    login(client)
    csrf = csrf_of(client, "/replay")
    # Checkpoint names whose heads live on three different masters (the listing is a SCAN).
    names = spread_topics(redis_cluster, cbus.keys.checkpoint, "cr-ckpt")
    done = client.post("/replay/start", data={"csrf": csrf, "sub": "c-audit",
                                              "checkpoint": names[0], "rate": "20/s"})
    assert done.status_code == 303
    job = console.jobs.jobs[0]
    wait_until(lambda: job.done >= 3, 60, "the slow replay under way")
    assert client.post("/replay/stop", data={"csrf": csrf, "job": str(job.no)}
                       ).status_code == 303
    wait_until(lambda: job.state != "running", 60, "the replay to stop")
    assert job.state == "stopped", job.summary
    first_part = cbus.client.xlen(cbus.keys.queue("c-audit"))
    assert 0 < first_part < len(wanted)
    done = client.post("/replay/resume", data={"csrf": csrf, "checkpoint": names[0]})
    assert done.status_code == 303, done.text
    resumed = console.jobs.jobs[0]
    wait_until(lambda: resumed.state != "running", 60, "the resumed run")
    assert resumed.state == "complete", resumed.summary
    assert resumed.delivered == len(wanted) - first_part
    assert queued_ids(cbus, "c-audit") == Counter(wanted)  # the range once, across masters
    # The run kept its progress in a shard beside the subscription's deliveries.
    assert cbus.client.exists(cbus.keys.checkpoint_shard(names[0], "c-audit"))
    for name, sub in zip(names[1:], ("c-b", "c-c"), strict=True):
        register(cbus, monkeypatch, sub, topics, types=["cr.made"])
        assert client.post("/replay/start", data={"csrf": csrf, "sub": sub,
                                                  "checkpoint": name}).status_code == 303
        job = console.jobs.jobs[0]
        wait_until(lambda j=job: j.state != "running", 60, "the replay to finish")
        assert job.state == "complete" and queued_ids(cbus, sub) == Counter(wanted)
    # Only the checkpoints are listed, from every master; their shards are not.
    assert [c.name for c in list_checkpoints(cbus)] == sorted(names)
    table = client.get("/replay").text.split('<table id="checkpoints">')[1]
    rows = re.findall(r'<tr><td>([^<]*)</td><td>[^<]*</td><td>[^<]*</td>\s*'
                      r'<td class="num">(\d+)</td><td>(\w+)</td>', table)
    assert sorted(rows) == sorted((n, str(len(wanted)), "complete") for n in names)


def test_console_command_given_one_nodes_url_serves_the_overview(
    cbus: EventBus, redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, ns: str,
) -> None:
    topics = spread(cbus, redis_cluster, "cc")
    register(cbus, monkeypatch, "c-lag", topics)
    cbus.publish_batch([Event(type="cc.made", topic=topics[i % 3], data={}) for i in range(9)])
    [stats] = chi_json(redis_cluster, ns, "stats")
    port = free_port()
    proc = subprocess.Popen(
        [str(CHI), "console", "--redis-url", redis_cluster.nodes[2].url, "--namespace", ns,
         "--port", str(port), "--sample-interval", "0.2"], env=clean_env(), cwd=str(ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got: dict[str, str] = {}

    def fetched() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        url = f"http://127.0.0.1:{port}/"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=10) as r:  # nosec B310
            got["page"] = r.read().decode()
        # Charts drawn: the sampler ran at least three times on the cluster.
        return page_sparks(got.get("page", "")) == 3 + 1

    try:
        wait_until(fetched, 60, "the console to serve its overview with charts", interval=0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"failed" not in err and b"Traceback" not in err, err.decode()
    page = got["page"]
    [sub] = stats["subscriptions"]
    assert sub["lag"] == 9 and cell(page, "c-lag", "lag") == "9"
    assert all(t in page for t in topics)

