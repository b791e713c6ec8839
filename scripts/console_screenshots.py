"""Take the screenshots of docs/console/ (run by scripts/console-screenshots).

A worker runs two subscriptions (``billing``, ``mailer``, which fails while a key says so);
a third (``analytics``) is registered with no worker, so it lags.  Events are published for
a few seconds so the charts have a shape, then each page is photographed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from playwright.sync_api import sync_playwright

from chi_redis import Event, EventBus
from chi_redis.runtime.subscriptions import SubscriptionRecord, encode_record

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "console"
URL = os.environ.get("CHI_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "screenshot-token"
APP = '''
from chi_redis import Event
from chi_redis.worker import bus


@bus.subscribe("billing", types=["order.*"], start="earliest")
def billing(event: Event) -> None:
    pass


@bus.subscribe("mailer", types=["user.*"], start="earliest", max_retries=0)
def mailer(event: Event) -> None:
    if bus.client.exists(f"{bus.namespace}:shots:broken"):
        raise ConnectionRefusedError("smtp.example.com:587 refused the connection")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"console-screenshots: timed out waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    ns = f"console-shots-{os.getpid()}"
    client = redis.Redis.from_url(URL)
    bus = EventBus(client, namespace=ns)
    tmp = Path(tempfile.mkdtemp(prefix="chi-console-shots-"))
    (tmp / "shots_app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHI_")}
    env.update(CHI_REDIS_URL=URL, CHI_NAMESPACE=ns, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp}",
               CHI_CONSOLE_TOKEN=TOKEN)
    bin_dir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []
    try:
        client.set(f"{ns}:shots:broken", 1)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "chi_redis.worker", "shots_app", "--processes",
             "1", "--threads", "2"], env=env, cwd=tmp, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(lambda: client.hexists(bus.keys.subs(), "mailer"), 60, "the worker")
        record = SubscriptionRecord(name="analytics", types=("order.*",), topics=("order",),
                                    last_seen_ms=int(time.time() * 1000))
        client.hset(bus.keys.subs(), "analytics", encode_record(record))
        client.xgroup_create(bus.keys.stream("order"), "analytics", id="0", mkstream=True)
        port = free_port()
        procs.append(subprocess.Popen(
            [str(bin_dir / "chi-redis"), "console", "--port", str(port), "--sample-interval",
             "0.5"], env=env, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        for i in range(24):  # traffic for the charts: a ramp, then a burst
            n = 5 + 3 * i if i < 16 else 120
            bus.publish_batch([Event(type="order.created", data={"order": f"o-{i}-{j}",
                                     "amount": 10 + j}) for j in range(n)])
            if i % 6 == 0:
                bus.publish(Event(type="user.created", data={"email": f"u{i}@example.com",
                                                             "password": "hunter2"}))
            time.sleep(0.5)
        wait(lambda: client.xlen(bus.keys.dlq("mailer")) >= 3, 60, "the dead letters")
        shoot(base, bus, client)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        for key in client.scan_iter(match=f"{ns}:*", count=1000):
            client.delete(key)


def shoot(base: str, bus: EventBus, client: redis.Redis) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_context(base_url=base, viewport={"width": 1280, "height": 820}
                                   ).new_page()
        page.goto("/login")
        page.fill("input[name=password]", TOKEN)
        page.click("#login")
        page.wait_for_selector("text=token:")

        def snap(name: str, full_page: bool = True) -> None:
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=full_page)
            print(f"docs/console/{name}.png")

        page.goto("/")
        page.wait_for_selector("#topics polyline")
        snap("overview")
        page.goto("/subscriptions/billing")
        snap("subscription")
        page.goto("/deadletters/mailer")
        snap("deadletters")
        page.click("#deadletters a >> text=/^\\d+-\\d+$/")
        snap("deadletter")
        page.goto("/events?topic=order&since=-1h&types=order.*")
        snap("events", full_page=False)  # its first rows: a full page is a long list
        page.click("#events a >> nth=3")
        snap("event")
        entries = client.xrange(bus.keys.stream("order"), count=200)
        page.goto("/replay")
        page.select_option("select[name=sub]", "billing")
        page.fill("input[name=since]", entries[100][0].decode())
        page.fill("input[name=until]", entries[199][0].decode())
        page.click("#dry-run")
        page.fill("input[name=checkpoint]", "billing-fix")
        page.click("#start")
        page.locator("#jobs td.state").first.filter(has_text="complete").wait_for()
        snap("replay")
        browser.close()


if __name__ == "__main__":
    main()
