"""The monitoring page and the Grafana dashboard name exactly the metrics that are exported."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from wsevents import WsApp

DOCS = Path(__file__).resolve().parent.parent / "docs"
NAME = re.compile(r"\bwsevents_[a-z_]+\b")
HISTOGRAM = "wsevents_handler_duration_seconds"


def exported() -> set[str]:
    ws = WsApp(heartbeat=0)
    metrics = ws.enable_metrics(registry=CollectorRegistry())
    return {*metrics.samples(), HISTOGRAM}


def test_the_page_lists_every_exported_metric_and_no_other() -> None:
    page = (DOCS / "monitoring.md").read_text(encoding="utf-8")
    table = {m.group(1) for m in re.finditer(r"^\| `(wsevents_[a-z_]+)` \|", page, re.MULTILINE)}
    assert table == exported()
    mentioned = {name.removesuffix("_bucket") for name in NAME.findall(page)}
    assert mentioned <= exported(), mentioned - exported()


def test_the_grafana_dashboard_is_valid_and_queries_exported_metrics() -> None:
    dashboard = json.loads((DOCS / "grafana" / "wsevents.json").read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 10
    queried = set()
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            queried |= {
                re.sub(r"_(bucket|sum|count)$", "", name) for name in NAME.findall(target["expr"])
            }
    assert queried <= exported(), queried - exported()
    # The main metrics all have a panel.
    for name in (
        "wsevents_connections",
        "wsevents_messages_received_total",
        "wsevents_replies_total",
        HISTOGRAM,
        "wsevents_pushes_delivered_total",
        "wsevents_pushes_dropped_total",
        "wsevents_slow_consumers_closed_total",
        "wsevents_transport_up",
        "wsevents_transport_publish_errors_total",
    ):
        assert name in queried, name
