"""The console's pages through Starlette's TestClient, on the real Redis: the numbers are
the CLI's, the actions do what the CLI's do."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from support import REDIS_URL

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli
from chi_redis.runtime.encoder import decode_message

from .conftest import csrf_of, login

pytestmark = pytest.mark.redis


def chi_json(ns: str, *args: str) -> list[Any]:
    """``chi-redis --json ARGS`` in this namespace: its JSON lines."""
    done = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None}
                     ).invoke(chi_cli, ["--redis-url", REDIS_URL, "--namespace", ns, "--json",
                                        *args], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def cell(page: str, sub: str, cls: str) -> str:
    row = re.search(rf'<tr[^>]*data-sub="{re.escape(sub)}">(.*?)</tr>', page, re.S)
    assert row, f"no row of {sub}"
    found = re.search(rf'<td class="num {cls}">(.*?)</td>', row.group(1), re.S)
    assert found, f"no {cls} cell"
    return html.unescape(found.group(1)).strip()


def test_overview_shows_the_numbers_chi_redis_stats_prints(
    make_console: Callable[..., Any], subscribe: Callable[..., None], bus: EventBus,
    client: redis.Redis, ns: str,
) -> None:
    subscribe("audit", "order", ["order.*"])
    subscribe("mailer", "order", ["order.created"])
    bus.publish_batch([Event(type="order.created", data={"i": i}) for i in range(7)])
    client.xreadgroup("mailer", "c1", {bus.keys.stream("order"): ">"}, count=3)  # pending 3
    _, tc = make_console()
    page = tc.get("/").text
    [stats] = chi_json(ns, "stats")
    by_name = {s["name"]: s for s in stats["subscriptions"]}
    assert cell(page, "audit", "lag") == str(by_name["audit"]["lag"]) == "7"
    assert cell(page, "mailer", "lag") == str(by_name["mailer"]["lag"]) == "4"
    # Nobody reads audit: it needs attention, first; mailer's consumer just read.
    attention = page.split("<h2>Subscriptions</h2>")[0]
    assert "audit</a>: no consumer alive, 7 waiting" in attention
    assert cell(page, "mailer", "alive").startswith("1 /")
    assert page.index('data-sub="audit"') < page.index('data-sub="mailer"')
    # The live-refresh partial serves the same table.
    assert cell(tc.get("/partials/overview").text, "audit", "lag") == "7"


def test_subscription_page_lists_consumers_and_pending_with_deliveries(
    make_console: Callable[..., Any], subscribe: Callable[..., None], bus: EventBus,
    client: redis.Redis, ns: str,
) -> None:
    subscribe("mailer", "order", ["order.*"])
    [sid] = bus.publish_batch([Event(type="order.created", data={})])
    stream = bus.keys.stream("order")
    client.xreadgroup("mailer", "worker-a", {stream: ">"})
    client.xclaim(stream, "mailer", "worker-b", 0, [sid])  # delivered a second time
    _, tc = make_console()
    page = tc.get("/subscriptions/mailer").text
    assert "worker-a" in page and "worker-b" in page
    row = re.search(rf"<tr><td>order</td>\s*<td><a [^>]*>{sid}</a></td>(.*?)</tr>", page, re.S)
    assert row and "worker-b" in row.group(1)
    assert row.group(1).rstrip().endswith('<td class="num">2</td>')
    assert tc.get("/subscriptions/nobody").status_code == 404
    # `chi-redis subscriptions show` reads the same: same consumers, same delivery count.
    [shown] = chi_json(ns, "subscriptions", "show", "mailer")
    assert {c["name"] for c in shown["consumers"]} == {"worker-a", "worker-b"}
    assert [(p["stream_id"], p["consumer"], p["deliveries"]) for p in shown["pending"]] == [
        (sid, "worker-b", 2)]


def test_dead_letters_list_show_redrive_and_purge(
    make_console: Callable[..., Any], subscribe: Callable[..., None],
    dead_letter: Callable[..., str], bus: EventBus, client: redis.Redis, ns: str,
) -> None:
    subscribe("payments", "pay", ["pay.*"])
    ids = [dead_letter("payments", i, card="4111-1111") for i in range(3)]
    _console, tc = make_console(redact=["card"])
    listing = tc.get("/deadletters/payments").text
    assert all(i in listing for i in ids) and "retries_exhausted" in listing
    cli_rows = chi_json(ns, "dlq", "list", "payments")
    assert [r["id"] for r in cli_rows] == ids
    one = tc.get(f"/deadletters/payments/{ids[0]}").text
    assert "ValueError" in one and "ev-0" in one and "retries_exhausted" in one
    # Redacted: the configured field, and the secret in the error text.
    assert "4111" not in one and "hunter2" not in one and "&#34;card&#34;: &#34;***&#34;" in one
    login(tc)
    csrf = csrf_of(tc, "/deadletters/payments")
    done = tc.post("/deadletters/payments/redrive", data={"csrf": csrf, "id": [ids[0], ids[1]]})
    assert done.status_code == 303 and "redriven%202" in done.headers["location"]
    assert client.xlen(bus.keys.dlq("payments")) == 1
    assert client.xlen(bus.keys.queue("payments")) == 2
    # Purge asks first: nothing is deleted until the confirmed form comes back.
    ask = tc.post("/deadletters/payments/purge", data={"csrf": csrf})
    assert ask.status_code == 200 and 'name="confirmed" value="yes"' in ask.text
    assert client.xlen(bus.keys.dlq("payments")) == 1
    done = tc.post("/deadletters/payments/purge", data={"csrf": csrf, "confirmed": "yes"})
    assert done.status_code == 303
    assert client.xlen(bus.keys.dlq("payments")) == 0


def test_events_browse_open_and_who_handled_it(
    make_console: Callable[..., Any], subscribe: Callable[..., None], bus: EventBus,
    client: redis.Redis,
) -> None:
    subscribe("done", "order", ["order.*"])
    subscribe("busy", "order", ["order.*"])
    subscribe("late", "order", ["order.*"])
    subscribe("other", "order", ["order.shipped"])
    event = Event(type="order.created", data={"secret_note": "xyzzy", "n": 1})
    [sid] = bus.publish_batch([event, Event(type="order.paid", data={})])[:1]
    stream = bus.keys.stream("order")
    for group in ("done", "busy", "other"):
        client.xreadgroup(group, "c", {stream: ">"}, count=1)
    client.xack(stream, "done", sid)
    client.xack(stream, "other", sid)
    _, tc = make_console()
    listing = tc.get("/events", params={"topic": "order", "types": "order.created"}).text
    assert sid in listing and "order.paid" not in listing
    page = tc.get(f"/events/{event.id}").text
    states = dict(re.findall(r'<tr class="state-[\w-]+"><td><a [^>]*>([\w-]+)</a></td>'
                             r"<td>([\w-]+)</td>", page))
    assert states == {"done": "handled", "busy": "in-flight", "late": "not-yet",
                      "other": "skipped"}
    assert "xyzzy" not in page and event.id in page
    assert tc.get(f"/events/{sid}", params={"topic": "order"}).status_code == 200
    assert tc.get("/events/no-such-event").status_code == 404


def test_rewind_asks_then_moves_the_group(
    make_console: Callable[..., Any], subscribe: Callable[..., None], bus: EventBus,
    client: redis.Redis,
) -> None:
    subscribe("audit", "order", ["order.*"])
    bus.publish_batch([Event(type="order.created", data={}) for _ in range(4)])
    stream = bus.keys.stream("order")
    for sid, _ in client.xreadgroup("audit", "c", {stream: ">"})[0][1]:
        client.xack(stream, "audit", sid)
    _, tc = make_console()
    login(tc)
    csrf = csrf_of(tc, "/subscriptions/audit")
    ask = tc.post("/subscriptions/audit/rewind", data={"csrf": csrf, "to": "0-0"})
    assert ask.status_code == 200 and "Rewind audit?" in ask.text
    refused = tc.post("/subscriptions/audit/rewind",
                      data={"csrf": csrf, "to": "0-0", "confirmed": "yes"})
    assert refused.status_code == 409 and "re-delivers entries it already handled" in refused.text
    done = tc.post("/subscriptions/audit/rewind",
                   data={"csrf": csrf, "to": "0-0", "confirmed": "yes", "force": "yes"})
    assert done.status_code == 303
    [group] = client.xinfo_groups(stream)
    assert group["lag"] == 4


def test_replay_counts_like_the_cli_then_delivers_and_resumes(
    make_console: Callable[..., Any], subscribe: Callable[..., None], bus: EventBus,
    client: redis.Redis, ns: str,
) -> None:
    from support import wait_until

    subscribe("audit", "order", ["order.created"])
    bus.publish_batch([Event(type="order.created" if i % 3 else "order.paid", data={"i": i})
                       for i in range(30)])
    [cli_report] = chi_json(ns, "replay", "--to", "audit", "--dry-run")
    console, tc = make_console()
    counted = tc.post("/replay/count", data={"sub": "audit"}).text
    assert f"would replay {cli_report['delivered']} events into audit" in counted
    assert cli_report["delivered"] == 20
    login(tc)
    csrf = csrf_of(tc, "/replay")
    done = tc.post("/replay/start", data={"csrf": csrf, "sub": "audit", "checkpoint": "c1",
                                          "rate": "10/s"})
    assert done.status_code == 303
    job = console.jobs.jobs[0]
    wait_until(lambda: job.done >= 3, 60, "the slow replay under way")
    stopped = tc.post("/replay/stop", data={"csrf": csrf, "job": str(job.no)})
    assert stopped.status_code == 303
    wait_until(lambda: job.state != "running", 60, "the replay to stop")
    assert job.state == "stopped", job.summary
    first_part = client.xlen(bus.keys.queue("audit"))
    assert 0 < first_part < 20
    jobs = tc.get("/partials/replay").text
    assert "c1" in jobs and "stopped" in jobs and "/replay/resume" in jobs
    # Resumed from the page: the rest, and nothing delivered twice.
    done = tc.post("/replay/resume", data={"csrf": csrf, "checkpoint": "c1"})
    assert done.status_code == 303
    resumed = console.jobs.jobs[0]
    wait_until(lambda: resumed.state != "running", 60, "the resumed run")
    assert resumed.state == "complete", resumed.summary
    assert resumed.delivered == 20 - first_part
    queued = [decode_message(next(iter(f.values())))
              for _, f in client.xrange(bus.keys.queue("audit"))]
    assert len({m.options["src_id"] for m in queued}) == len(queued) == 20
