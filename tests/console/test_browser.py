"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright,
against ``chi-redis console`` and a worker, both real subprocesses on the real Redis.

One module-wide stack (console, browser, namespace) serves the four stories in order; each
starts and stops the worker it needs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from support import REDIS_URL, free_port, wait_until
from support.keys import delete_namespace
from support.processes import ROOT, WorkerProcess, clean_env, wait_ready, worker_env
from support.servers import connect_real_redis
from support.skips import skip_or_fail
from support.waiting import stays

from chi_redis import Event, EventBus

from .conftest import TOKEN

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHI = Path(sys.executable).parent / "chi-redis"
#: Playwright's own wait for an element to show a text (the page refreshes every 2 s).
SHOWN_MS = 60_000


@dataclass
class Stack:
    ns: str
    client: redis.Redis
    bus: EventBus
    url: str
    tmp: Path
    console: subprocess.Popen[bytes]
    browser: Any
    workers: list[WorkerProcess]

    def start_worker(self) -> WorkerProcess:
        w = WorkerProcess("console.console_app", worker_env(REDIS_URL, self.ns),
                          self.tmp / f"worker-{len(self.workers)}.log", threads=2).start()
        self.workers.append(w)
        wait_ready(w)
        return w

    def page(self, logged_in: bool) -> Any:
        page = self.browser.new_context(base_url=self.url).new_page()
        page.set_default_timeout(SHOWN_MS)
        if logged_in:
            page.goto("/login")
            page.fill("input[name=password]", TOKEN)
            page.click("#login")
            page.wait_for_selector("text=token:")
        return page

    def handled(self, sub: str) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.ns}:test:{sub}")
        return {k.decode(): int(v) for k, v in raw.items()}

    def console_log(self) -> str:
        return (self.tmp / "console.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not os.path.exists(CHROMIUM):
        skip_or_fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/services)")
    from playwright.sync_api import sync_playwright

    ns = f"t{uuid.uuid4().hex[:12]}"
    tmp = tmp_path_factory.mktemp("console")
    client = connect_real_redis(REDIS_URL)
    port = free_port()
    log = open(tmp / "console.log", "wb")  # noqa: SIM115 - handed to the child
    console = subprocess.Popen(
        [str(CHI), "--redis-url", REDIS_URL, "--namespace", ns, "console", "--port", str(port),
         "--alive-within", "3", "--sample-interval", "0.5"],
        cwd=str(ROOT), env=clean_env(CHI_CONSOLE_TOKEN=TOKEN), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    workers: list[WorkerProcess] = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: b"console on" in (tmp / "console.log").read_bytes(), 60,
                   "the console to start")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                yield Stack(ns, client, EventBus(client, namespace=ns), url, tmp, console,
                            browser, workers)
            finally:
                browser.close()
    finally:
        for w in workers:
            w.stop()
        os.killpg(console.pid, signal.SIGTERM)
        try:
            console.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(console.pid, signal.SIGKILL)
            console.wait(timeout=10)
        delete_namespace(client, ns)
        client.close()


def test_overview_shows_the_lag_of_a_stopped_subscription(stack: Stack) -> None:
    worker = stack.start_worker()
    wait_until(lambda: stack.client.hexists(stack.bus.keys.subs(), "audit"), 60,
               "audit registered")
    worker.stop()
    page = stack.page(logged_in=False)
    page.goto("/")
    page.locator('tr[data-sub="audit"] td.lag').filter(has_text="0").wait_for()
    # Published while the page is open: its live refresh shows the lag, no reload.
    stack.bus.publish_batch([Event(type="order.created", data={"i": i}) for i in range(50)])
    row = page.locator('tr[data-sub="audit"]')
    row.locator("td.lag").filter(has_text="50").wait_for()
    # The worker is gone: no consumer alive, and audit comes first under "needs attention".
    page.locator(".attention li").first.filter(
        has_text="audit: no consumer alive, 50 waiting").wait_for()
    assert row.locator("td.alive").inner_text().startswith("0 /")
    page.context.close()


def test_a_dead_letter_is_opened_redriven_from_the_page_and_handled(stack: Stack) -> None:
    stack.client.set(f"{stack.ns}:test:broken", 1)
    worker = stack.start_worker()
    event = Event(type="pay.charged", data={"amount": 12, "api_key": "sk_live_secret"})
    stack.bus.publish(event)
    wait_until(lambda: stack.client.xlen(stack.bus.keys.dlq("payments")) == 1, 60,
               "the dead letter")
    page = stack.page(logged_in=True)
    page.goto("/deadletters/payments")
    page.click("#deadletters a >> text=/^\\d+-\\d+$/")
    assert "RuntimeError" in page.inner_text(".f-error_type")
    assert event.id in page.inner_text("#event")
    assert "card processor refused" in page.inner_text("#traceback")
    assert "sk_live_secret" not in page.content()  # neither the field nor the error's copy
    stack.client.delete(f"{stack.ns}:test:broken")
    page.click("#redrive-one")
    page.locator(".flash").filter(has_text="redriven 1 dead letter(s) of payments").wait_for()
    wait_until(lambda: stack.handled("payments") == {event.id: 1}, 60, "the redriven event")
    assert stack.client.xlen(stack.bus.keys.dlq("payments")) == 0
    assert "action by token:" in stack.console_log()
    page.context.close()
    worker.stop()


def test_a_replay_started_from_the_page_delivers_its_range_once(stack: Stack) -> None:
    worker = stack.start_worker()
    # audit catches up on the 50 events published while it was stopped.
    wait_until(lambda: len(stack.handled("audit")) == 50, 60, "audit to catch up")
    entries = stack.client.xrange(stack.bus.keys.stream("order"))
    chosen = entries[10:30]
    in_range = {f[b"id"].decode() for _, f in chosen}
    page = stack.page(logged_in=True)
    page.goto("/replay")
    page.select_option("select[name=sub]", "audit")
    page.fill("input[name=since]", chosen[0][0].decode())
    page.fill("input[name=until]", chosen[-1][0].decode())
    page.click("#dry-run")
    assert page.inner_text("#count") == "would replay 20 events into audit"
    page.fill("input[name=checkpoint]", "from-the-page")
    page.click("#start")
    page.locator("#jobs td.state").first.filter(has_text="complete").wait_for()
    assert page.inner_text("#jobs td.delivered") == "20"
    want = {eid: 2 if eid in in_range else 1 for eid in stack.handled("audit")}
    wait_until(lambda: stack.handled("audit") == want, 60, "the replayed range handled")
    assert stays(lambda: stack.handled("audit") == want, 1.0)  # and nothing more
    page.context.close()
    worker.stop()


def test_an_action_without_the_token_is_refused(stack: Stack) -> None:
    stream = stack.bus.keys.stream("order")
    before = {g["name"]: g["last-delivered-id"] for g in stack.client.xinfo_groups(stream)}
    page = stack.page(logged_in=False)
    page.goto("/subscriptions/audit")
    page.fill("input[name=to]", "0-0")
    page.click("text=Rewind…")
    assert "needs the console token" in page.inner_text(".error")
    after = {g["name"]: g["last-delivered-id"] for g in stack.client.xinfo_groups(stream)}
    assert after == before
    assert "refused rewind audit" in stack.console_log()
    page.context.close()
