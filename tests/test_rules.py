"""Rules as code: the Prometheus config and rules, their promtool unit tests, Alertmanager's
routing, grouping and inhibition, and the runbook every notification links to.

promtool and amtool come from Debian (`apt-get install prometheus prometheus-alertmanager`);
the checks that need them fail, naming the package, when they are not on PATH. The promtool
unit tests are shown to be able to fail: each rule, removed or made never to fire, must
break them.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.records import AlertKind
from streams.core.notify import NotifyLinks, alertname, to_alertmanager
from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "rules" / "cxmon.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "cxmon_test.yml"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = REPO / "docs" / "runbook.md"

RUNBOOK_URL = "https://github.com/cx-monitor/cx-monitor/blob/main/docs/runbook.md"
OVERVIEW = "http://localhost:3000/d/cxmon-overview"
TOUCHPOINT = "http://localhost:3000/d/cxmon-touchpoint?var-touchpoint={{ $labels.touchpoint }}"
# What the notifier names each kind of stream alert: every one links its runbook section.
STREAM_ALERTS = tuple(alertname(kind.value) for kind in AlertKind)
SEVERITIES = {"warning", "critical"}
ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}
DEBIAN_PACKAGE = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}

Labels = dict[str, str]


# ----------------------------------------------------------------------------------------
# Files and tools


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def rules_of(rules_file: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rules_file["groups"]:
        yield from group["rules"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules_of(load_yaml(RULES)) if "alert" in rule]


def alert_names() -> list[str]:
    return [str(rule["alert"]) for rule in alert_rules()]


def recording_names() -> list[str]:
    return [str(rule["record"]) for rule in rules_of(load_yaml(RULES)) if "record" in rule]


def alert_cases() -> Iterator[dict[str, Any]]:
    """Every alert_rule_test entry of the promtool test file."""
    for test in load_yaml(RULE_TESTS)["tests"]:
        yield from test.get("alert_rule_test") or []


def expected_alerts(alertname: str) -> list[Labels]:
    """The full label sets the promtool tests expect `alertname` to fire with."""
    found = []
    for case in alert_cases():
        if case["alertname"] == alertname:
            for alert in case.get("exp_alerts") or []:
                found.append({"alertname": alertname, **alert["exp_labels"]})
    assert found, f"the promtool tests never expect {alertname} to fire"
    return found


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: install it with "
            f"`sudo apt-get install {DEBIAN_PACKAGE[name]}` (CI does this before the tests)"
        )
    return path


def run(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def succeeds(name: str, *args: str | Path) -> str:
    result = run(name, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} {' '.join(map(str, args))} failed:\n{output}"
    return output


# ----------------------------------------------------------------------------------------
# Prometheus


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    output = succeeds("promtool", "check", "config", PROMETHEUS_CONFIG)
    # rule_files resolve relative to the config file: the rules must actually be found.
    assert "1 rule files found" in output, output
    assert f"SUCCESS: {len(list(rules_of(load_yaml(RULES))))} rules found" in output, output


def test_prometheus_config_scrapes_both_workers_and_alerts_alertmanager() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    matched = [
        path for pattern in config["rule_files"] for path in PROMETHEUS_CONFIG.parent.glob(pattern)
    ]
    assert matched == [RULES]
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cx-monitor"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": ["worker-1:6066", "worker-2:6066"]}]


def test_rules_are_valid() -> None:
    succeeds("promtool", "check", "rules", RULES)


def test_rule_unit_tests_pass() -> None:
    output = succeeds("promtool", "test", "rules", RULE_TESTS)
    assert "SUCCESS" in output, output


def never_fires(rule: dict[str, Any]) -> None:
    rule["expr"] = "vector(1) == 0"


def removed(rule: dict[str, Any]) -> None:
    rule.clear()


@pytest.mark.parametrize("breakage", [never_fires, removed], ids=["never-fires", "removed"])
@pytest.mark.parametrize("name", alert_names() + recording_names())
def test_rule_unit_tests_fail_when_a_rule_breaks(
    name: str, breakage: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    broken = copy.deepcopy(load_yaml(RULES))
    for group in broken["groups"]:
        for rule in group["rules"]:
            if name in (rule.get("alert"), rule.get("record")):
                breakage(rule)
        group["rules"] = [rule for rule in group["rules"] if rule]
    # The same layout as the repository: the test file names ../rules/cxmon.yml.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(broken), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = run("promtool", "test", "rules", tmp_path / "tests" / RULE_TESTS.name)
    assert result.returncode != 0, f"the promtool tests still pass with {name} broken"


def test_recorded_series_are_recorded_before_the_rules_that_read_them() -> None:
    """Rule groups run on their own timers (and in random order in `promtool test`): a rule
    reading a recorded series must come after it in the same group, or it reads it late."""
    records = set(recording_names())
    for group in load_yaml(RULES)["groups"]:
        seen: set[str] = set()
        for rule in group["rules"]:
            used = set(re.findall(r"cxmon:[a-z0-9_:]+", rule["expr"])) & records
            assert used <= seen, f"{rule.get('alert') or rule.get('record')} reads {used - seen}"
            if "record" in rule:
                seen.add(rule["record"])
    for name in records:
        assert name.startswith("cxmon:"), name


def test_every_alert_rule_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in alert_cases():
        (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
        for alert in case.get("exp_alerts") or []:
            assert set(alert["exp_annotations"]) == ANNOTATIONS, case
            assert alert["exp_labels"]["severity"] in SEVERITIES, case
    names = set(alert_names())
    assert names <= firing, f"never shown to fire: {sorted(names - firing)}"
    assert names <= quiet, f"never shown to stay quiet: {sorted(names - quiet)}"
    assert firing | quiet <= names, f"tests of unknown alerts: {sorted((firing | quiet) - names)}"
    assert {"CxMonitorWorkerDown", "CxMonitorKeyMomentDegraded"} <= names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_rule_labels_and_links(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    labels = rule.get("labels") or {}
    if "severity" in labels:
        assert labels["severity"] in SEVERITIES
    else:  # the severity comes from the series: the aggregation must keep it
        assert re.search(r"by \([^)]*\bseverity\b", rule["expr"]), rule["expr"]
    annotations = rule["annotations"]
    assert set(annotations) == ANNOTATIONS
    assert annotations["runbook_url"] == f"{RUNBOOK_URL}#{name.lower()}"
    has_touchpoint = all("touchpoint" in alert for alert in expected_alerts(name))
    assert annotations["dashboard_url"] == (TOUCHPOINT if has_touchpoint else OVERVIEW)


# ----------------------------------------------------------------------------------------
# The runbook


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return [github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)]


def test_github_anchor() -> None:
    assert github_anchor("CxMonitorWorkerDown") == "cxmonitorworkerdown"
    assert github_anchor("What it means, first!") == "what-it-means-first"


@pytest.mark.parametrize("name", [*STREAM_ALERTS, *alert_names()])
def test_runbook_has_a_section_per_alert(name: str) -> None:
    anchors = runbook_anchors()
    assert anchors.count(name.lower()) == 1, f"docs/runbook.md: no unique section {name}"
    # Stream alerts link the runbook through the notifier's defaults.
    defaults = Settings()
    assert defaults.runbook_url == RUNBOOK_URL
    link = NotifyLinks(defaults.runbook_url, defaults.grafana_url).runbook(name)
    assert link == f"{RUNBOOK_URL}#{name.lower()}"


def test_the_docs_explain_their_examples_rather_than_cite_a_seed_by_number() -> None:
    # "seed 002's car buyer" meant nothing to a newcomer: the seeds are not in this repository.
    cited = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (RUNBOOK, REPO / "README.md", REPO / "deploy" / "catalog.example.yaml",
                     *sorted((REPO / "streams").glob("*.py")))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bseed 0\d\d", line, re.IGNORECASE)
    ]  # fmt: skip
    assert not cited


def test_runbook_links_within_the_page_resolve() -> None:
    anchors = set(runbook_anchors())
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8"))
    assert links
    assert set(links) <= anchors, set(links) - anchors


# ----------------------------------------------------------------------------------------
# Alertmanager: matchers, the routing tree and inhibition, as Alertmanager applies them


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        found = re.fullmatch(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*', text)
        assert found, f"cannot read matcher {text!r}"
        name, op, value = found.groups()
        return cls(name, op, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.op in ("=", "!="):
            return (value == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, value) is not None) == (self.op == "=~")


def all_match(matchers: list[str], labels: Mapping[str, str]) -> bool:
    return all(Matcher.parse(text).matches(labels) for text in matchers)


INHERITED = ("receiver", "group_by", "group_wait", "group_interval", "repeat_interval")


def route(
    labels: Mapping[str, str],
    node: dict[str, Any] | None = None,
    inherited: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of the route an alert ends on (no `continue` in this config): the
    first child whose matchers all match, depth first; unset settings are inherited."""
    node = node or load_yaml(ALERTMANAGER_CONFIG)["route"]
    assert not {"match", "match_re", "continue"} & set(node), "extend route() first"
    settings = {key: node.get(key, (inherited or {}).get(key)) for key in INHERITED}
    for child in node.get("routes") or []:
        if all_match(child.get("matchers") or [], labels):
            return route(labels, child, settings)
    return settings


def seconds(duration: str) -> int:
    found = re.fullmatch(r"(\d+)([smh])", duration)
    assert found, duration
    return int(found[1]) * {"s": 1, "m": 60, "h": 3600}[found[2]]


def inhibited(target: Mapping[str, str], firing: list[Labels]) -> bool:
    for rule in load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        if not all_match(rule["target_matchers"], target):
            continue
        for source in firing:
            if source != target and all_match(rule["source_matchers"], source):
                equal = rule.get("equal") or []
                if all(source.get(name, "") == target.get(name, "") for name in equal):
                    return True
    return False


def stream_labels(kind: str, subject: str, **extra: str) -> Labels:
    """The labels the worker's notifier gives a stream alert."""
    alert = {
        "kind": kind,
        "subject": subject,
        "severity": "critical",
        "status": "firing",
        "starts_at": "2026-11-23T11:20:00+00:00",
        "summary": f"{subject} alert",
        "observed": 7.5,
        "threshold": 10,
        "window": "30m",
        "fingerprint": "f",
        **extra,
    }
    links = NotifyLinks(RUNBOOK_URL, "http://localhost:3000")
    posted = to_alertmanager(
        alert, now_ms=1_795_000_000_000, resend_ms=60_000, links=links, pseudonym_key=b"k"
    )
    labels: Labels = posted["labels"]
    return labels


def test_alertmanager_config_is_valid() -> None:
    output = succeeds("amtool", "check-config", ALERTMANAGER_CONFIG)
    assert "SUCCESS" in output, output


ROUTING = [
    ({"alertname": "CxMonitorWorkerDown", "severity": "critical"}, "on-call"),
    ({"alertname": "CxMonitorDeadLettersRising", "severity": "warning"}, "cx-ops"),
    ({"alertname": "KeyMomentDegraded", "severity": "critical", "touchpoint": "a"}, "on-call"),
    ({"alertname": "KeyMomentDegraded", "severity": "warning", "touchpoint": "a"}, "cx-ops"),
    ({"alertname": "OverMessaged", "severity": "warning", "customer": "p1"}, "cx-ops"),
    ({"alertname": "OverMessaged", "severity": "critical", "customer": "p1"}, "on-call"),
    ({"alertname": "JourneyBreak", "severity": "critical", "from": "a", "to": "b"}, "on-call"),
    ({"alertname": "JourneyBreak", "severity": "warning", "from": "a", "to": "b"}, "cx-ops"),
    ({"alertname": "ChannelInconsistent", "severity": "critical", "stage": "purchase"}, "on-call"),
    ({"alertname": "ChannelInconsistent", "severity": "warning", "stage": "purchase"}, "cx-ops"),
    ({"alertname": "SomethingElse"}, "cx-ops"),
]


@pytest.mark.parametrize(("labels", "receiver"), ROUTING)
def test_routing_by_severity(labels: Labels, receiver: str) -> None:
    pairs = [f"{name}={value}" for name, value in labels.items()]
    result = run(
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *pairs
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver], result.stdout
    # route() below reads the same tree: it must agree with Alertmanager's own answer.
    assert route(labels)["receiver"] == receiver


@pytest.mark.parametrize("severity", sorted(SEVERITIES))
def test_over_messaged_customers_make_one_group(severity: str) -> None:
    alerts = [stream_labels("over_messaged", f"customer-{n}", severity=severity) for n in range(3)]
    assert len({alert["customer"] for alert in alerts}) == 3
    settings = [route(alert) for alert in alerts]
    assert all(found["group_by"] == ["alertname"] for found in settings)
    keys = {tuple(alert.get(name, "") for name in found["group_by"]) for alert, found in
            zip(alerts, settings, strict=True)}  # fmt: skip
    assert len(keys) == 1


def test_journey_breaks_group_per_break() -> None:
    breaks = [("app.cart", "checkout.payment"), ("app.login", "app.cart")]
    alerts = [
        stream_labels("journey_break", f"{a} -> {b}", severity="critical", **{"from": a, "to": b})
        for a, b in breaks
    ]
    settings = [route(alert) for alert in alerts]
    assert all(found["group_by"] == ["alertname", "from", "to"] for found in settings)
    keys = {tuple(alert.get(name, "") for name in found["group_by"]) for alert, found in
            zip(alerts, settings, strict=True)}  # fmt: skip
    assert keys == {("JourneyBreak", a, b) for a, b in breaks}


def test_inconsistent_channels_group_per_stage_metric_and_channel() -> None:
    cases = [
        ("purchase", "nps", "mini_program"),
        ("purchase", "nps", "web"),
        ("service", "csat", "web"),
    ]
    alerts = [
        stream_labels(
            "channel_inconsistent",
            f"{stage}/{metric}/{channel}",
            severity="warning",
            stage=stage,
            metric=metric,
            channel=channel,
        )
        for stage, metric, channel in cases
    ]
    (fallback,) = expected_alerts("CxMonitorChannelInconsistent")
    for alert in [*alerts, fallback]:
        assert route(alert)["group_by"] == ["alertname", "stage", "metric", "channel"], alert
    assert {tuple(a[name] for name in ("stage", "metric", "channel")) for a in alerts} == set(cases)


def test_the_stream_channel_alert_inhibits_the_prometheus_fallback() -> None:
    (fallback,) = expected_alerts("CxMonitorChannelInconsistent")
    stage, metric, channel = fallback["stage"], fallback["metric"], fallback["channel"]
    stream = stream_labels(
        "channel_inconsistent",
        f"{stage}/{metric}/{channel}",
        stage=stage,
        metric=metric,
        channel=channel,
    )
    assert stream["source"] == "stream"
    assert inhibited(fallback, [stream])
    # Only the same channel of the same rule: another channel still notifies.
    assert not inhibited({**fallback, "channel": "web"}, [stream])
    assert not inhibited({**fallback, "metric": "csat"}, [stream])
    assert not inhibited(stream, [fallback])


def test_other_alerts_group_per_key_moment() -> None:
    for labels in (
        stream_labels("key_moment_degraded", "checkout.payment", metric="nps"),
        {"alertname": "CxMonitorWorkerDown", "severity": "critical"},
        {"alertname": "CxMonitorDeadLettersRising", "severity": "warning"},
    ):
        assert route(labels)["group_by"] == ["alertname", "touchpoint", "metric"], labels


@pytest.mark.parametrize("labels", [labels for labels, _ in ROUTING])
def test_notification_timing_is_sensible(labels: Labels) -> None:
    found = route(labels)
    wait, interval, repeat = (seconds(found[key]) for key in INHERITED[2:])
    assert 0 < wait <= 60, "the first notification of a group waits at most a minute"
    assert wait <= interval <= repeat
    assert 3600 <= repeat <= 24 * 3600


def test_receivers_are_webhooks_sending_resolved() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert set(receivers) == {"on-call", "cx-ops"}
    for name, receiver in receivers.items():
        assert set(receiver) == {"name", "webhook_configs"}
        (webhook,) = receiver["webhook_configs"]
        assert webhook == {"url": f"http://webhook:9095/{name}", "send_resolved": True}
    assert config["route"]["receiver"] == "cx-ops"

    def urls(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for item in value.values():
                yield from urls(item)
        elif isinstance(value, list):
            for item in value:
                yield from urls(item)
        elif isinstance(value, str) and "://" in value:
            yield value

    # A live test rewrites webhook_configs[].url: no URL may hide anywhere else.
    outside = copy.deepcopy(config)
    for receiver in outside["receivers"]:
        for webhook in receiver["webhook_configs"]:
            webhook.pop("url")
    assert list(urls(outside)) == []


def test_stream_key_moment_alert_inhibits_the_prometheus_fallback() -> None:
    (fallback,) = expected_alerts("CxMonitorKeyMomentDegraded")
    touchpoint, metric = fallback["touchpoint"], fallback["metric"]
    stream = stream_labels("key_moment_degraded", touchpoint, metric=metric)
    assert stream["source"] == "stream"
    assert inhibited(fallback, [stream])
    # Only the same key moment: another metric or touchpoint still notifies.
    assert not inhibited({**fallback, "metric": "csat"}, [stream])
    assert not inhibited({**fallback, "touchpoint": "app.login"}, [stream])
    # Never the other way round, and nothing mutes the stream alert.
    assert not inhibited(stream, [fallback])
    assert not inhibited(fallback, [])


def test_worker_down_inhibits_lag_and_no_events_of_its_job() -> None:
    down = expected_alerts("CxMonitorWorkerDown")[0]
    muted = [
        *expected_alerts("CxMonitorNoEventsArriving"),
        *expected_alerts("CxMonitorConsumerLagGrowing"),
    ]
    for alert in muted:
        assert inhibited(alert, [down]), alert
        assert not inhibited(alert, []), alert
        # Another deployment's worker being down mutes nothing here.
        assert not inhibited(alert, [{**down, "job": "cx-monitor-staging"}]), alert
    for name in ("CxMonitorDeadLettersRising", "CxMonitorKeyMomentDegraded"):
        for alert in expected_alerts(name):
            assert not inhibited(alert, [down]), alert
    over_messaged = stream_labels("over_messaged", "customer-1")
    assert not inhibited(over_messaged, [down, *muted])
    assert not inhibited(down, [down, *muted])
