"""The Grafana dashboards as data: every query they run, and Grafana's variable substitution.

`panel_queries` lists the PromQL of every target of every panel (panels nested in rows
included) and of every query template variable; `instantiate` substitutes variables the
way Grafana does, so a test can send each query to a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"

# Grafana's own variable syntax: $var, [[var]] / [[var:format]], ${var} / ${var.field:format}.
VARIABLE = re.compile(
    r"\$(?P<plain>\w+)"
    r"|\[\[(?P<brackets>\w+?)(?::\w+)?\]\]"
    r"|\$\{(?P<braces>\w+)(?:\.[^:^}]+)?(?::[^}]+)?\}"
)
LABEL_VALUES = re.compile(
    r"\s*label_values\(\s*(?:(?P<selector>.*\S)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*", re.DOTALL
)
QUERY_RESULT = re.compile(r"\s*query_result\((?P<expr>.*)\)\s*", re.DOTALL)
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Json = dict[str, Any]


@dataclass(frozen=True)
class PanelQuery:
    """One query a dashboard runs: `panel` is the panel title, or `variable NAME`."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str


def load(path: Path) -> Json:
    dashboard: Json = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def all_panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, rows included, and the panels of collapsed rows after their row."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: Json) -> Iterator[Json]:
    """The panels that query data (everything but rows)."""
    return (panel for panel in all_panels(dashboard) if panel.get("type") != "row")


def variables(dashboard: Json) -> list[Json]:
    listed: list[Json] = dashboard.get("templating", {}).get("list", [])
    return listed


def variable_query(variable: Json) -> str:
    """The text of a query variable's query (a string, or `{"query": ...}` since Grafana 10)."""
    raw = variable.get("query", "")
    text = raw.get("query", "") if isinstance(raw, dict) else raw
    return str(text)


def variable_expr(query_text: str) -> str:
    """PromQL that returns data exactly when a Prometheus variable query has values.

    `label_values(S, L)` becomes `group by (L) (S{L!=""})`, one series per value the
    variable would list; `query_result(E)` becomes `E`. Other forms are refused.
    """
    match = LABEL_VALUES.fullmatch(query_text)
    if match is not None:
        label = match["label"]
        selector = match["selector"]
        if selector is None:
            series = f'{{{label}!=""}}'
        elif selector.endswith("}"):
            head = selector[:-1].rstrip().rstrip(",").rstrip()
            separator = "" if head.endswith("{") else ", "
            series = f'{head}{separator}{label}!=""}}'
        elif METRIC_NAME.fullmatch(selector):
            series = f'{selector}{{{label}!=""}}'
        else:
            raise ValueError(f"label_values selector {selector!r} is not a series selector")
        return f"group by ({label}) ({series})"
    match = QUERY_RESULT.fullmatch(query_text)
    if match is not None:
        return match["expr"].strip()
    raise ValueError(f"variable query {query_text!r} is neither label_values(...) nor query_result")


def panel_queries(path: Path) -> list[PanelQuery]:
    """Every query of the dashboard at `path`: panel targets, then query variables."""
    dashboard = load(path)
    uid = str(dashboard.get("uid", path.stem))
    found: list[PanelQuery] = []
    for panel in query_panels(dashboard):
        title = str(panel.get("title", f"panel {panel.get('id')}"))
        for target in panel.get("targets", []):
            found.append(
                PanelQuery(uid, title, str(target.get("refId", "")), str(target.get("expr", "")))
            )
    for variable in variables(dashboard):
        if variable.get("type") == "query":
            name = str(variable.get("name", ""))
            expr = variable_expr(variable_query(variable))
            found.append(PanelQuery(uid, f"variable {name}", f"var-{name}", expr))
    return found


def default_variables(path: Path) -> dict[str, str]:
    """The value each template variable of the dashboard is saved with (`current`)."""
    values: dict[str, str] = {}
    for variable in variables(load(path)):
        current = variable.get("current") or {}
        value = current.get("value")
        if isinstance(value, str):
            values[str(variable["name"])] = value
    return values


def grafana_builtins(
    range_seconds: int, interval_seconds: int = 15, scrape_interval_seconds: int = 15
) -> dict[str, str]:
    """`$__range`, `$__interval` and `$__rate_interval` as Grafana computes them.

    `$__rate_interval` is max(`$__interval` + scrape interval, 4 x scrape interval).
    """
    interval = max(interval_seconds, scrape_interval_seconds)
    rate_interval = max(interval + scrape_interval_seconds, 4 * scrape_interval_seconds)
    return {
        "__range": f"{range_seconds}s",
        "__range_s": str(range_seconds),
        "__interval": f"{interval}s",
        "__interval_ms": str(interval * 1000),
        "__rate_interval": f"{rate_interval}s",
    }


def instantiate(expr: str, variables: Mapping[str, str]) -> str:
    """`expr` with every Grafana variable replaced by its value in `variables`.

    Keys are variable names with or without the `$` (`touchpoint`, `__rate_interval`).
    Formats (`${var:raw}`, `[[var:regex]]`) are ignored: the value is inserted as is.
    Raises `KeyError` naming every variable that has no value.
    """
    values = {name.removeprefix("$"): value for name, value in variables.items()}
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match["plain"] or match["brackets"] or match["braces"]
        if name not in values:
            missing.append(name)
            return match[0]
        return values[name]

    result = VARIABLE.sub(substitute, expr)
    if missing:
        raise KeyError(
            f"no value for {', '.join('$' + n for n in sorted(set(missing)))} in {expr!r}"
        )
    return result
