"""Grafana as code: the provisioning files and dashboards, checked without Grafana.

Structure (uids, datasource, refIds, layout, units) is checked on the JSON; every metric
and label a query names is checked against what the worker exports; and every query,
with its variables substituted as Grafana would, is parsed by a real Prometheus. That
the queries return data is the live test's job (a real Prometheus scraping a worker).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from agents import metrics
from models.records import AlertKind
from streams.catalog import ScoreMetric, load_catalog
from tests.dashboards import (
    DASHBOARDS,
    REPO,
    PanelQuery,
    all_panels,
    default_variables,
    grafana_builtins,
    instantiate,
    load,
    panel_queries,
    query_panels,
    variable_expr,
    variable_query,
    variables,
)
from tests.prometheus import query, start_prometheus
from tests.test_compose import host_path, load_compose, service_using

PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
DATASOURCES_FILE = PROVISIONING / "datasources" / "prometheus.yml"
PROVIDERS_FILE = PROVISIONING / "dashboards" / "cxmon.yml"
# Where the grafana/grafana image reads provisioning, and where compose mounts dashboards.
GRAFANA_PROVISIONING_DIR = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS_DIR = "/var/lib/grafana/dashboards"

EXPECTED = {
    "overview.json": ("cxmon-overview", "cx-monitor: overview"),
    "touchpoint.json": ("cxmon-touchpoint", "cx-monitor: touchpoint"),
}
TOUCHPOINT_VARIABLE_QUERY = "label_values(cxmon_touchpoint_info, touchpoint)"
GRID_COLUMNS = 24

# Every metric the worker exports: name -> (type, labels). Prometheus adds job, instance.
EXPORTED: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels))
    for name, kind, labels in [
        ("cxmon_records_total", "counter", ["topic"]),
        ("cxmon_duplicates_total", "counter", ["topic"]),
        ("cxmon_dead_letters_total", "counter", ["topic", "reason"]),
        ("cxmon_late_records_total", "counter", []),
        ("cxmon_event_time_judged_seconds", "gauge", []),
        ("cxmon_messaging_limit_messages", "gauge", ["scope"]),
        ("cxmon_messages_after_verdict_total", "counter", []),
        ("cxmon_unresolved_contact_messages_total", "counter", []),
        ("cxmon_alerts_total", "counter", ["kind", "status"]),
        ("cxmon_batch_processing_seconds", "histogram", ["stage"]),
        ("cxmon_ingest_latency_seconds", "histogram", []),
        ("cxmon_touchpoint_score", "gauge", ["touchpoint", "metric"]),
        ("cxmon_touchpoint_samples", "gauge", ["touchpoint", "metric"]),
        ("cxmon_touchpoint_wait_seconds", "gauge", ["touchpoint", "statistic"]),
        ("cxmon_touchpoint_info", "gauge", ["touchpoint", "stage"]),
        ("cxmon_key_moment_degraded", "gauge", ["touchpoint", "metric", "severity"]),
        ("cxmon_key_moment_threshold", "gauge", ["touchpoint", "metric", "breaks"]),
        ("cxmon_journey_broken", "gauge", ["from", "to", "severity"]),
        ("cxmon_journey_break_rate", "gauge", ["from", "to"]),
        ("cxmon_journey_break_samples", "gauge", ["from", "to"]),
        ("cxmon_channel_inconsistent", "gauge", ["stage", "metric", "channel", "severity"]),
        ("cxmon_channel_score", "gauge", ["stage", "metric", "channel"]),
        ("cxmon_channel_gap", "gauge", ["stage", "metric", "channel"]),
        ("cxmon_channel_samples", "gauge", ["stage", "metric", "channel"]),
        ("cxmon_messaging_fatigue", "gauge", ["metric", "severity"]),
        ("cxmon_fatigue_cohort_score", "gauge", ["metric", "cohort"]),
        ("cxmon_fatigue_cohort_samples", "gauge", ["metric", "cohort"]),
        ("cxmon_fatigue_gap", "gauge", ["metric"]),
        ("cxmon_consumer_lag_records", "gauge", ["topic", "partition"]),
        ("cxmon_outbound_messages_total", "counter", ["channel", "category"]),
        ("cxmon_customer_window_messages", "histogram", []),
        ("cxmon_alertmanager_pushes_total", "counter", ["outcome"]),
        ("cxmon_alertmanager_active_alerts", "gauge", []),
        ("cxmon_group_members", "gauge", []),
        ("cxmon_stalled_input_partitions", "gauge", []),
    ]
}
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Values a matcher may select, per label, where the exporter fixes them.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "metric": frozenset(m.value for m in ScoreMetric),
    "statistic": frozenset({"mean", "p95"}),
    "cohort": frozenset({"messaged", "others"}),
    "kind": frozenset(kind.value for kind in AlertKind),
    "status": frozenset({"firing", "resolved"}),
    "outcome": frozenset({"sent", "failed"}),
    "breaks": frozenset({"below", "above"}),
    "scope": frozenset({"window", "channel"}),
    # of cxmon_batch_processing_seconds
    "stage": frozenset({"ingest", "score", "frequency", "journeys", "breaks"}),
}
# The waiting time is exported in seconds as cxmon_touchpoint_wait_seconds, never as a score.
NOT_SCORES = frozenset({ScoreMetric.DURATION_MS.value})

# Each topic the overview must show, as a metric (series) some panel queries.
OVERVIEW_TOPICS = [
    "cxmon_key_moment_degraded",
    "cxmon_key_moment_threshold",
    "cxmon_touchpoint_score",
    "cxmon_touchpoint_samples",
    "cxmon_touchpoint_info",
    "cxmon_touchpoint_wait_seconds",
    "cxmon_alerts_total",
    "cxmon_customer_window_messages_bucket",
    "cxmon_records_total",
    "cxmon_duplicates_total",
    "cxmon_dead_letters_total",
    "cxmon_consumer_lag_records",
    "cxmon_ingest_latency_seconds_bucket",
    "cxmon_batch_processing_seconds_bucket",
    "cxmon_outbound_messages_total",
    "cxmon_alertmanager_pushes_total",
    "cxmon_journey_break_rate",
    "cxmon_journey_broken",
    "cxmon_channel_score",
    "cxmon_channel_gap",
    "cxmon_channel_inconsistent",
    "cxmon_fatigue_cohort_score",
    "cxmon_fatigue_gap",
    "cxmon_messaging_fatigue",
]

METRIC_IN_EXPR = re.compile(r"cxmon_[a-z_]+")
SELECTOR = re.compile(r"(?P<name>cxmon_[a-z_]+)\s*\{(?P<matchers>[^}]*)\}")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>[^"]*)"')
RATE_OF = re.compile(r"\b(?:rate|irate|increase)\(\s*(?P<name>cxmon_[a-z_]+)")

Json = dict[str, Any]
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))


def dashboard_ids() -> list[str]:
    return [path.name for path in DASHBOARD_FILES]


@pytest.fixture(params=DASHBOARD_FILES, ids=dashboard_ids())
def dashboard_path(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    uid: str = provisioned_datasources()[0]["uid"]
    return uid


def provisioned_datasources() -> list[Json]:
    document = yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))
    sources: list[Json] = document["datasources"]
    return sources


def all_queries() -> list[PanelQuery]:
    return [found for path in DASHBOARD_FILES for found in panel_queries(path)]


def sample_variables() -> dict[str, str]:
    """What Grafana would substitute over a 6 h range: the saved touchpoint, the builtins."""
    values = grafana_builtins(range_seconds=6 * 3600)
    for path in DASHBOARD_FILES:
        values.update(default_variables(path))
    return values


def metric_names(expr: str) -> set[str]:
    return set(METRIC_IN_EXPR.findall(expr))


def exported_series(name: str) -> str | None:
    """The exported metric `name` is a series of, or None if the worker has no such series."""
    if name in EXPORTED and EXPORTED[name][0] != "histogram":
        return name
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and EXPORTED.get(base, ("", frozenset()))[0] == "histogram":
            return base
    return None


# --- provisioning ---------------------------------------------------------------------


def test_the_datasource_is_provisioned() -> None:
    document = yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "cxmon-prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    assert source["jsonData"]["timeInterval"] == "15s"


def test_the_dashboards_are_provisioned_from_the_mounted_folder() -> None:
    document = yaml.safe_load(PROVIDERS_FILE.read_text(encoding="utf-8"))
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "cx-monitor"
    assert provider["options"]["path"] == GRAFANA_DASHBOARDS_DIR
    # Grafana reads <provisioning>/datasources/*.yml and <provisioning>/dashboards/*.yml.
    assert DATASOURCES_FILE.parent.parent == PROVIDERS_FILE.parent.parent == PROVISIONING
    assert DATASOURCES_FILE.parent.name == "datasources"
    assert PROVIDERS_FILE.parent.name == "dashboards"
    assert DASHBOARD_FILES, f"no dashboards in {DASHBOARDS}"


def test_compose_mounts_the_provisioning_and_dashboards_where_grafana_reads_them() -> None:
    found = service_using(load_compose(), "grafana/grafana")
    assert found is not None, "docker-compose.yml has no Grafana service"
    _, service = found
    provisioning = host_path(service, GRAFANA_PROVISIONING_DIR, REPO)
    dashboards = host_path(service, GRAFANA_DASHBOARDS_DIR, REPO)
    assert provisioning is not None
    assert provisioning.resolve() == PROVISIONING
    assert dashboards is not None
    assert dashboards.resolve() == DASHBOARDS


# --- dashboard structure --------------------------------------------------------------


def test_the_dashboards_are_the_expected_ones() -> None:
    found = {path.name: (load(path)["uid"], load(path)["title"]) for path in DASHBOARD_FILES}
    assert found == EXPECTED
    uids = [uid for uid, _ in found.values()]
    assert len(uids) == len(set(uids))


def test_dashboard_header(dashboard_path: Path) -> None:
    dashboard = load(dashboard_path)
    assert dashboard["schemaVersion"] == 39
    assert "id" not in dashboard or dashboard["id"] is None  # provisioned: Grafana assigns it
    assert "cx-monitor" in dashboard["tags"]
    assert dashboard["panels"]


def test_every_panel_and_target_uses_the_provisioned_datasource(
    dashboard_path: Path, datasource_uid: str
) -> None:
    expected = {"type": "prometheus", "uid": datasource_uid}
    problems = []
    dashboard = load(dashboard_path)
    for panel in query_panels(dashboard):
        if panel.get("datasource") != expected:
            problems.append(f"panel {panel.get('title')!r}: {panel.get('datasource')}")
        for target in panel.get("targets", []):
            if target.get("datasource") != expected:
                problems.append(f"{panel.get('title')!r} {target.get('refId')}: datasource")
    for variable in variables(dashboard):
        if variable.get("type") == "query" and variable.get("datasource") != expected:
            problems.append(f"variable {variable.get('name')}: {variable.get('datasource')}")
    assert problems == []


def test_every_target_has_an_expr_and_a_ref_id_unique_in_its_panel(dashboard_path: Path) -> None:
    problems = []
    for panel in query_panels(load(dashboard_path)):
        title = panel.get("title")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{title!r}: no targets")
        ref_ids = [target.get("refId") for target in targets]
        if len(ref_ids) != len(set(ref_ids)) or not all(ref_ids):
            problems.append(f"{title!r}: refIds {ref_ids}")
        problems += [
            f"{title!r} {target.get('refId')}: no expr"
            for target in targets
            if not str(target.get("expr", "")).strip()
        ]
    assert problems == []


def test_panel_ids_and_titles(dashboard_path: Path) -> None:
    panels = list(all_panels(load(dashboard_path)))
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))
    assert all(str(panel.get("title", "")).strip() for panel in panels)


def overlaps(a: Json, b: Json) -> bool:
    return bool(
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def layout_problems(panels: list[Json]) -> Iterator[str]:
    for panel in panels:
        pos = panel.get("gridPos")
        if not isinstance(pos, dict) or not all(isinstance(pos.get(k), int) for k in "xywh"):
            yield f"{panel.get('title')!r}: gridPos {pos}"
            continue
        if pos["w"] <= 0 or pos["h"] <= 0 or pos["x"] < 0 or pos["y"] < 0:
            yield f"{panel.get('title')!r}: gridPos {pos}"
        if pos["x"] + pos["w"] > GRID_COLUMNS:
            yield f"{panel.get('title')!r}: wider than the grid: {pos}"
    placed = [panel for panel in panels if isinstance(panel.get("gridPos"), dict)]
    for index, first in enumerate(placed):
        for second in placed[index + 1 :]:
            if overlaps(first["gridPos"], second["gridPos"]):
                yield f"{first.get('title')!r} overlaps {second.get('title')!r}"


def test_panels_are_placed_without_overlap(dashboard_path: Path) -> None:
    dashboard = load(dashboard_path)
    top = dashboard["panels"]
    problems = list(layout_problems(top))
    for panel in top:  # a collapsed row's panels are laid out among themselves
        problems += layout_problems(panel.get("panels", []))
    assert problems == []


def panel_metric_names(panel: Json) -> set[str]:
    return {name for t in panel.get("targets", []) for name in metric_names(str(t.get("expr")))}


def test_every_panel_sets_its_unit(dashboard_path: Path) -> None:
    problems = []
    for panel in query_panels(load(dashboard_path)):
        title = panel.get("title")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            problems.append(f"{title!r}: no unit")
            continue
        exprs = [str(target.get("expr")) for target in panel.get("targets", [])]
        names = panel_metric_names(panel)
        if names and all("_seconds" in name for name in names) and unit != "s":
            problems.append(f"{title!r}: seconds shown as {unit}")
        rates = exprs and all(re.search(r'metric=~?"(failure|abandon)_rate', e) for e in exprs)
        if rates and unit != "percentunit":
            problems.append(f"{title!r}: a rate shown as {unit}")
    assert problems == []


# --- queries against the exporter ------------------------------------------------------


def test_the_metric_list_is_what_the_worker_exports() -> None:
    exposition = generate_latest(metrics.REGISTRY).decode()
    types = dict(
        line.split()[2:4] for line in exposition.splitlines() if line.startswith("# TYPE ")
    )
    exported = {name: kind for name, kind in types.items() if not name.endswith("_created")}
    assert exported == {name: kind for name, (kind, _) in EXPORTED.items()}


def test_every_metric_a_query_names_is_exported() -> None:
    problems = [
        f"{q.dashboard} {q.panel!r} {q.ref_id}: {name}"
        for q in all_queries()
        for name in sorted(metric_names(q.expr))
        if exported_series(name) is None
    ]
    assert problems == []


def test_only_counters_and_histogram_series_are_rated() -> None:
    problems = []
    for q in all_queries():
        for name in RATE_OF.findall(q.expr):
            base = exported_series(name)
            kind = EXPORTED[base][0] if base is not None else "unknown"
            if kind == "gauge":
                problems.append(f"{q.panel!r} {q.ref_id}: rate of gauge {name}")
    assert problems == []


def test_every_selector_names_exported_labels_and_values() -> None:
    problems = []
    for q in all_queries():
        for selector in SELECTOR.finditer(q.expr):
            name = selector["name"]
            base = exported_series(name)
            if base is None:
                continue  # reported by test_every_metric_a_query_names_is_exported
            labels = EXPORTED[base][1] | TARGET_LABELS
            if name.endswith("_bucket"):
                labels |= {"le"}
            for matcher in MATCHER.finditer(selector["matchers"]):
                label, op, value = matcher["label"], matcher["op"], matcher["value"]
                where = f"{q.panel!r} {q.ref_id} {name}"
                if label not in labels:
                    problems.append(f"{where}: no label {label!r}")
                    continue
                known = LABEL_VALUES.get(label)
                if known is None or "$" in value or op.startswith("!"):
                    continue
                if label == "stage" and base != "cxmon_batch_processing_seconds":
                    continue  # journey stages, from the catalog
                if base == "cxmon_touchpoint_score":
                    known = known - NOT_SCORES
                chosen = value.split("|") if op == "=~" else [value]
                problems += [
                    f"{where}: {label}={v!r} never exported" for v in chosen if v not in known
                ]
    assert problems == []


def test_the_overview_covers_every_topic() -> None:
    queries = panel_queries(DASHBOARDS / "overview.json")
    used = {name for q in queries for name in metric_names(q.expr)}
    assert [topic for topic in OVERVIEW_TOPICS if topic not in used] == []
    # One panel per headline score of every touchpoint.
    for metric in ["nps", "csat", "ces", "failure_rate", "abandon_rate"]:
        assert any(f'cxmon_touchpoint_score{{metric="{metric}"}}' in q.expr for q in queries), (
            metric
        )
    for statistic in ["p95", "mean"]:
        assert any(f'statistic="{statistic}"' in q.expr for q in queries), statistic
    # Stage scores: weighted by samples, the stage joined from the info metric.
    by_stage = [q for q in queries if "group_left (stage) cxmon_touchpoint_info" in q.expr]
    assert by_stage
    assert all("sum by (stage" in q.expr and "cxmon_touchpoint_samples" in q.expr for q in by_stage)
    # Latency percentiles and alert transitions by kind and status.
    assert any("histogram_quantile(0.5," in q.expr for q in queries)
    assert any("histogram_quantile(0.99," in q.expr for q in queries)
    assert any("by (kind, status)" in q.expr for q in queries)


def test_no_query_is_empty_by_construction() -> None:
    """Filters that make a panel legitimately empty on a healthy run are not used."""
    problems = [
        f"{q.panel!r} {q.ref_id}"
        for q in all_queries()
        if re.search(r"[><]=?\s*0\b|==\s*1\b|outcome=\"failed\"", q.expr)
    ]
    assert problems == []


# --- the touchpoint drill-down ----------------------------------------------------------


def test_the_touchpoint_variable(datasource_uid: str) -> None:
    dashboard = load(DASHBOARDS / "touchpoint.json")
    (variable,) = [v for v in variables(dashboard) if v.get("name") == "touchpoint"]
    assert variable["type"] == "query"
    assert variable["datasource"] == {"type": "prometheus", "uid": datasource_uid}
    assert " ".join(variable_query(variable).split()) == TOUCHPOINT_VARIABLE_QUERY
    assert variable.get("multi") is False
    assert variable.get("includeAll") is False
    # The saved choice is a key moment, so that every drill-down panel has data by default.
    catalog = load_catalog(REPO / "deploy" / "catalog.example.yaml")
    default = default_variables(DASHBOARDS / "touchpoint.json")["touchpoint"]
    assert default in {moment.touchpoint for moment in catalog.key_moments}


def test_every_drill_down_panel_is_about_the_chosen_touchpoint() -> None:
    queries = [q for q in panel_queries(DASHBOARDS / "touchpoint.json") if q.ref_id[:4] != "var-"]
    assert queries
    assert [q.panel for q in queries if '"$touchpoint"' not in q.expr] == []
    used = {name for q in queries for name in metric_names(q.expr)}
    assert {
        "cxmon_touchpoint_score",
        "cxmon_touchpoint_samples",
        "cxmon_touchpoint_info",
        "cxmon_touchpoint_wait_seconds",
        "cxmon_key_moment_degraded",
        "cxmon_key_moment_threshold",
    } <= used


# --- the helpers ----------------------------------------------------------------------


def test_instantiate_substitutes_every_grafana_form() -> None:
    values = {"touchpoint": "app.login", "__rate_interval": "1m", "$__range": "6h"}
    assert (
        instantiate(
            'x{t="$touchpoint", u="${touchpoint}", v="[[touchpoint]]"}[$__rate_interval]', values
        )
        == 'x{t="app.login", u="app.login", v="app.login"}[1m]'
    )
    assert instantiate("increase(x[$__range])", values) == "increase(x[6h])"
    assert instantiate('x{t="${touchpoint:raw}"}', values) == 'x{t="app.login"}'
    assert instantiate('x{t=~"a.*$"}', values) == 'x{t=~"a.*$"}'  # a regex anchor is no variable


def test_instantiate_refuses_an_unresolved_variable() -> None:
    with pytest.raises(KeyError, match=r"\$__interval"):
        instantiate("rate(x[$__interval])", {"__rate_interval": "1m"})
    with pytest.raises(KeyError, match=r"\$stage"):
        instantiate('x{stage="${stage}"}', {})


def test_variable_queries_become_promql() -> None:
    assert variable_expr(TOUCHPOINT_VARIABLE_QUERY) == (
        'group by (touchpoint) (cxmon_touchpoint_info{touchpoint!=""})'
    )
    assert variable_expr('label_values(up{job="a"}, instance)') == (
        'group by (instance) (up{job="a", instance!=""})'
    )
    assert variable_expr("label_values(x{}, l)") == 'group by (l) (x{l!=""})'
    assert variable_expr("label_values(stage)") == 'group by (stage) ({stage!=""})'
    assert variable_expr("query_result(topk(3, up))") == "topk(3, up)"
    with pytest.raises(ValueError, match="neither"):
        variable_expr("metrics(cxmon_.*)")


def test_panel_queries_finds_targets_in_collapsed_rows_and_variables(tmp_path: Path) -> None:
    nested = {"id": 3, "type": "stat", "title": "nested", "targets": [{"refId": "A", "expr": "c"}]}
    dashboard = {
        "uid": "d",
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "top",
                "targets": [{"refId": "A", "expr": "a"}, {"refId": "B", "expr": "b"}],
            },
            {"id": 2, "type": "row", "title": "row", "collapsed": True, "panels": [nested]},
        ],
        "templating": {
            "list": [
                {"name": "tp", "type": "query", "query": {"query": "label_values(info, tp)"}},
                {"name": "span", "type": "interval", "query": "1m,5m"},
            ]
        },
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard), encoding="utf-8")
    assert panel_queries(path) == [
        PanelQuery("d", "top", "A", "a"),
        PanelQuery("d", "top", "B", "b"),
        PanelQuery("d", "nested", "A", "c"),
        PanelQuery("d", "variable tp", "var-tp", 'group by (tp) (info{tp!=""})'),
    ]


def test_panel_queries_lists_every_target_and_variable(dashboard_path: Path) -> None:
    dashboard = load(dashboard_path)
    targets = sum(len(panel.get("targets", [])) for panel in query_panels(dashboard))
    query_variables = sum(1 for v in variables(dashboard) if v.get("type") == "query")
    found = panel_queries(dashboard_path)
    assert len(found) == targets + query_variables
    assert {q.dashboard for q in found} == {dashboard["uid"]}


# --- every query is valid PromQL, as a real Prometheus parses it -------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_prometheus(tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def test_prometheus_refuses_invalid_promql(prometheus: str) -> None:
    """The check below can fail: a broken query gets an error, not an empty answer."""
    answer = query(prometheus, "sum by (stage (cxmon_touchpoint_info)")
    assert answer["status"] == "error"
    assert answer["errorType"] == "bad_data"
    answer = query(prometheus, "cxmon_touchpoint_score * on (touchpoint) group_left (stage")
    assert answer["status"] == "error"


def test_every_query_is_valid_promql(prometheus: str) -> None:
    values = sample_variables()
    problems = []
    queries = all_queries()
    assert queries
    for q in queries:
        expr = instantiate(q.expr, values)
        answer = query(prometheus, expr)
        if answer.get("status") != "success":
            problems.append(f"{q.dashboard} {q.panel!r} {q.ref_id}: {answer.get('error')}")
    assert problems == []
