"""docs/operations.md documents every metric there is; the Grafana dashboard asks only for
documented ones; the exporter's families are exactly the documented gauges."""

from __future__ import annotations

import json
import re

from support.processes import ROOT

from chi_redis.observe.gauges import GAUGES

DOC = (ROOT / "docs" / "operations.md").read_text()
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
_ROW_METRIC = re.compile(r"^\| `(chi_[a-z_]+)` \|", re.M)
_IN_EXPR = re.compile(r"\bchi_[a-z_]+")
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def documented() -> set[str]:
    return set(_ROW_METRIC.findall(DOC))


def test_every_gauge_and_counter_has_a_row() -> None:
    names = documented()
    assert set(GAUGES) <= names
    assert "chi_scrape_errors_total" in names
    # the runtime counters and histogram of the worker processes
    assert {"chi_events_handled_total", "chi_handler_duration_seconds", "chi_reclaimed_total",
            "chi_dead_lettered_total", "chi_events_published_total"} <= names


def _base(name: str) -> str:
    for part in _HISTOGRAM_PARTS:
        if name.endswith(part) and name[: -len(part)] in documented():
            return name[: -len(part)]
    return name


def test_the_dashboard_is_valid_json_whose_panels_query_documented_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    names = documented()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = {_base(n) for n in _IN_EXPR.findall(target["expr"])}
            assert used, f"{panel['title']}: {target['expr']} names no chi_ metric"
            assert used <= names, f"{panel['title']}: undocumented {used - names}"


def test_the_alert_rules_use_documented_metrics() -> None:
    rules = DOC.split("## Alert rules", 1)[1].split("## Grafana", 1)[0]
    exprs = re.findall(r"expr: (.+)", rules)
    assert len(exprs) >= 4
    for expr in exprs:
        assert {_base(n) for n in _IN_EXPR.findall(expr)} <= documented(), expr
