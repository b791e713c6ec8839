"""F19: replay delivers exactly the range, never silently re-runs side effects, and never
pretends a trimmed range is complete.

Covered in tests/cli and reused, not repeated here: a replay ``--to`` a subscription that
appeared after the events delivers exactly the range, in order, once
(test_replay.py::test_replay_to_one_subscription_delivers_exactly_the_range_in_order_once);
a range trimmed by retention reports the exact gap, one trimmed by someone else warns it
may be incomplete (test_replay.py::test_replay_of_a_range_trimmed_by_*).  This case runs
the three on one history, with the checker, and adds the refusal: moving a subscription's
own group back over entries it handled (``subscriptions rewind``) is refused without
``--force``; with it, ``dedupe`` keeps the side effects from running twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from support import Recorder, drained, in_process_runtime, wait_until
from support.figures import record
from support.history import History, record_commit
from support.servers import REDIS_URL

from chi_redis import Event, EventBus
from chi_redis.cli.main import cli as chi_cli

pytestmark = pytest.mark.redis


def chi(ns: str, *args: str) -> Result:
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    return runner.invoke(chi_cli, ["--redis-url", REDIS_URL, "--namespace", ns, *args],
                         catch_exceptions=False)


def test_f19_replay_exact_range_refused_rewind_and_trimmed_range(
        real_client: redis.Redis, ns: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(tmp_path / "history")
    monkeypatch.setenv("CHI_TEST_HISTORY", str(history.folder))
    bus = EventBus(real_client, namespace=ns)
    bus.subscribe("ledger-a", topics=["ledger"], start="earliest", dedupe=True)(
        lambda e: record_commit(e.id))
    stream = bus.keys.stream("ledger")
    with in_process_runtime(bus, monkeypatch, threads=2) as rt:
        rt.worker(rt.broker())
        events = [Event(type="ledger.posted", data={"i": i}) for i in range(50)]
        for e in events:
            history.invoke(e.id)
        sids = bus.publish_batch(events)
        for e in events:
            history.ok(e.id)
        wait_until(history.committed_all_ok, 60, "ledger-a handled all 50")

        # A new subscription gets exactly the replayed range: XRANGE's count, once each.
        fresh = Recorder()
        bus2 = rt.new_bus()
        bus2.subscribe("fresh", topics=["ledger"])(lambda e, d: fresh.add((e.id, d.replay)))
        rt.worker(rt.broker(bus2, set_global=False))
        out = chi(ns, "replay", "--to", "fresh", "--topic", "ledger", "--since", sids[10],
                  "--until", sids[29])
        assert out.exit_code == 0, out.output
        expected = [f[b"id"].decode() for _s, f in real_client.xrange(stream, sids[10],
                                                                      sids[29])]
        wait_until(lambda: len(fresh) >= len(expected), 60, "fresh handled the replay")
        assert sorted(fresh.items()) == sorted((i, True) for i in expected)

        # The group that already ran its side effects is not moved back silently.
        before = real_client.xinfo_groups(stream)
        refused = chi(ns, "subscriptions", "rewind", "ledger-a", "--to", sids[10])
        assert refused.exit_code == 1 and "--force" in refused.stderr, refused.output
        assert "40 on topic ledger" in refused.stderr
        assert real_client.xinfo_groups(stream) == before
        forced = chi(ns, "subscriptions", "rewind", "ledger-a", "--to", sids[10], "--force")
        assert forced.exit_code == 0, forced.output
        wait_until(lambda: drained(real_client, bus, "ledger-a", ["ledger"]), 60,
                   "ledger-a read the rewound range again")
    verdict = history.check()

    # A range that starts before the first entry left (trimmed by someone else): a warning
    # with the first available id, and a report that says it is not complete.
    real_client.xtrim(stream, minid=sids[20], approximate=False)
    printed = chi(ns, "replay", "--print", "--topic", "ledger", "--since", sids[5])
    assert len(printed.stdout.splitlines()) == real_client.xlen(stream) == 30
    assert f"first available entry is {sids[20]}" in printed.stderr
    report = json.loads(chi(ns, "--json", "replay", "--dry-run", "--topic", "ledger",
                            "--since", sids[5]).stdout)
    assert report["gaps"] and report["gaps"][0]["first_available"] == sids[20]
    assert not report["gaps"][0]["exact"] and report["gaps"][0]["removed"] == 20
    record("F19-replay", **verdict.figures(), replayed_to_new=len(fresh),
           xrange_count=len(expected), rewind_refused=True,
           duplicated_effects_after_forced_rewind=verdict.duplicated,
           trimmed_gap=report["gaps"][0]["message"])
    verdict.assert_nothing_lost()  # dedupe: the forced rewind ran no side effect twice
