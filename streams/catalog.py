"""The catalog CX ops edit: touchpoints, key moments and their standards, the messaging policy."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, time
from enum import StrEnum
from functools import reduce
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from models.records import Category, Severity, Stage

DURATION_PATTERN = re.compile(r"(\d+)(ms|s|m|h|d)")
DURATION_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class ScoreMetric(StrEnum):
    NPS = "nps"
    CSAT = "csat"
    CES = "ces"
    SENTIMENT = "sentiment"
    FAILURE_RATE = "failure_rate"
    ABANDON_RATE = "abandon_rate"
    DURATION_MS = "duration_ms"


class CatalogError(ValueError):
    """A catalog the worker refuses, with the file, line and reason."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.line = line
        self.reason = reason


def parse_duration_ms(text: str) -> int:
    match = DURATION_PATTERN.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m, 1h or 7d")
    return int(match.group(1)) * DURATION_UNITS_MS[match.group(2)]


def format_duration(millis: int) -> str:
    for unit in ("d", "h", "m", "s"):
        size = DURATION_UNITS_MS[unit]
        # A day reads as 24h, as people write it; a week as 7d.
        if millis % size == 0 and not (unit == "d" and millis == size):
            return f"{millis // size}{unit}"
    return f"{millis}ms"


@dataclass(frozen=True, slots=True)
class KeyMoment:
    touchpoint: str
    metric: ScoreMetric
    below: float | None
    above: float | None
    window_ms: int
    step_ms: int
    min_samples: int
    severity: Severity

    @property
    def id(self) -> str:
        return f"{self.touchpoint}/{self.metric.value}"

    @property
    def threshold(self) -> float:
        bound = self.below if self.below is not None else self.above
        assert bound is not None
        return bound

    def breaks(self, value: float) -> bool:
        """True when `value` misses the standard."""
        if self.below is not None:
            return value < self.below
        assert self.above is not None
        return value > self.above

    def standard(self) -> str:
        return f"below {self.below:g}" if self.below is not None else f"above {self.above:g}"


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time
    timezone: ZoneInfo

    def contains(self, millis: int) -> bool:
        local = datetime.fromtimestamp(millis / 1000, tz=self.timezone).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        # A span that crosses midnight, such as 22:00-08:00.
        return local >= self.start or local < self.end

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.timezone.key}"


@dataclass(frozen=True, slots=True)
class MessagingPolicy:
    window_ms: int = 86_400_000
    max_messages: int = 5
    max_per_channel: int = 3
    categories: frozenset[Category] = frozenset({Category.MARKETING})
    quiet_hours: QuietHours | None = None
    severity: Severity = Severity.WARNING


@dataclass(frozen=True, slots=True)
class ScoreWindow:
    """The rolling window every touchpoint is scored on, key moment or not."""

    window_ms: int = 3_600_000
    step_ms: int = 300_000
    grace_ms: int = 60_000


@dataclass(frozen=True)
class Catalog:
    touchpoints: dict[str, Stage] = field(default_factory=dict)
    key_moments: tuple[KeyMoment, ...] = ()
    messaging: MessagingPolicy = field(default_factory=MessagingPolicy)
    scores: ScoreWindow = field(default_factory=ScoreWindow)

    def key_moments_for(self, touchpoint: str) -> tuple[KeyMoment, ...]:
        return self._moments_by_touchpoint().get(touchpoint, ())

    def bucket_ms(self, touchpoint: str) -> int:
        """The finest granularity every window of this touchpoint is a whole multiple of."""
        sizes = [self.scores.window_ms, self.scores.step_ms]
        for moment in self.key_moments_for(touchpoint):
            sizes += [moment.window_ms, moment.step_ms]
        return reduce(math.gcd, sizes)

    def retention_ms(self, touchpoint: str) -> int:
        longest = max(
            [self.scores.window_ms, *(m.window_ms for m in self.key_moments_for(touchpoint))]
        )
        return longest + self.scores.grace_ms

    def _moments_by_touchpoint(self) -> dict[str, tuple[KeyMoment, ...]]:
        cached: dict[str, tuple[KeyMoment, ...]] | None = self.__dict__.get("_by_touchpoint")
        if cached is None:
            grouped: dict[str, list[KeyMoment]] = {}
            for moment in self.key_moments:
                grouped.setdefault(moment.touchpoint, []).append(moment)
            cached = {name: tuple(moments) for name, moments in grouped.items()}
            object.__setattr__(self, "_by_touchpoint", cached)
        return cached


def load_catalog(path: str | Path) -> Catalog:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(source, None, f"cannot read the catalog: {exc.strerror}") from None
    return parse_catalog(text, source)


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(source, line, f"not valid YAML: {problem}") from None
    if root is None:
        return Catalog()
    reader = _Reader(source)
    sections = reader.mapping(root, "the catalog")
    reader.only(sections, {"touchpoints", "key_moments", "messaging", "scores"}, root)
    scores = reader.score_window(sections.get("scores"))
    return Catalog(
        touchpoints=reader.touchpoints(sections.get("touchpoints")),
        key_moments=reader.key_moments(sections.get("key_moments"), scores),
        messaging=reader.messaging(sections.get("messaging")),
        scores=scores,
    )


KEY_MOMENT_KEYS = {
    "touchpoint",
    "metric",
    "below",
    "above",
    "window",
    "step",
    "min_samples",
    "severity",
}
MESSAGING_KEYS = {
    "window",
    "max_messages",
    "max_per_channel",
    "categories",
    "quiet_hours",
    "severity",
}


class _Reader:
    """Walks YAML nodes so that every refusal can name the line it is about."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node, reason: str) -> CatalogError:
        return CatalogError(self.source, node.start_mark.line + 1, reason)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        entries: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, what)
            if key in entries:
                raise self.fail(key_node, f"{key!r} appears twice in {what}")
            entries[key] = value_node
        return entries

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what}: expected a single value")
        return str(node.value)

    def only(self, entries: dict[str, yaml.Node], allowed: set[str], node: yaml.Node) -> None:
        for key in entries:
            if key not in allowed:
                # Point at the offending key's own line, not where its mapping starts.
                key_node = next((k for k, _ in node.value if k.value == key), node)
                raise self.fail(
                    key_node, f"unknown key {key!r}; expected one of {', '.join(sorted(allowed))}"
                )

    def number(self, node: yaml.Node, what: str) -> float:
        text = self.scalar(node, what)
        try:
            value = float(text)
        except ValueError:
            raise self.fail(node, f"{what}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise self.fail(node, f"{what}: {text!r} is not a finite number")
        return value

    def count(self, node: yaml.Node, what: str) -> int:
        text = self.scalar(node, what)
        if not (text.isascii() and text.isdigit()):
            raise self.fail(node, f"{what}: {text!r} is not a whole number")
        return int(text)

    def duration(self, node: yaml.Node, what: str) -> int:
        try:
            return parse_duration_ms(self.scalar(node, what))
        except ValueError as exc:
            raise self.fail(node, f"{what}: {exc}") from None

    def choice(self, node: yaml.Node, what: str, kind: type[StrEnum]) -> Any:
        text = self.scalar(node, what)
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise self.fail(node, f"{what}: {text!r} is not one of {allowed}") from None

    def score_window(self, node: yaml.Node | None) -> ScoreWindow:
        if node is None:
            return ScoreWindow()
        entries = self.mapping(node, "scores")
        self.only(entries, {"window", "step", "grace"}, node)
        default = ScoreWindow()
        window = (
            self.duration(entries["window"], "scores.window")
            if "window" in entries
            else default.window_ms
        )
        step = (
            self.duration(entries["step"], "scores.step") if "step" in entries else default.step_ms
        )
        grace = (
            self.duration(entries["grace"], "scores.grace")
            if "grace" in entries
            else default.grace_ms
        )
        if window % step:
            raise self.fail(node, "scores: window must be a whole number of steps")
        return ScoreWindow(window_ms=window, step_ms=step, grace_ms=grace)

    def touchpoints(self, node: yaml.Node | None) -> dict[str, Stage]:
        if node is None:
            return {}
        stages: dict[str, Stage] = {}
        for name, entry in self.mapping(node, "touchpoints").items():
            fields = self.mapping(entry, f"touchpoint {name}")
            self.only(fields, {"stage"}, entry)
            if "stage" in fields:
                stages[name] = self.choice(fields["stage"], f"touchpoint {name}: stage", Stage)
        return stages

    def key_moments(self, node: yaml.Node | None, scores: ScoreWindow) -> tuple[KeyMoment, ...]:
        if node is None:
            return ()
        moments: list[KeyMoment] = []
        seen: set[str] = set()
        for entry in self.sequence(node, "key_moments"):
            moment = self.key_moment(entry, scores)
            if moment.id in seen:
                raise self.fail(entry, f"key moment {moment.id} is declared twice")
            seen.add(moment.id)
            moments.append(moment)
        return tuple(moments)

    def key_moment(self, node: yaml.Node, scores: ScoreWindow) -> KeyMoment:
        fields = self.mapping(node, "a key moment")
        self.only(fields, KEY_MOMENT_KEYS, node)
        for required in ("touchpoint", "metric"):
            if required not in fields:
                raise self.fail(node, f"a key moment needs {required!r}")
        touchpoint = self.scalar(fields["touchpoint"], "touchpoint")
        what = f"key moment {touchpoint}"
        metric: ScoreMetric = self.choice(fields["metric"], f"{what}: metric", ScoreMetric)
        if ("below" in fields) == ("above" in fields):
            raise self.fail(node, f"{what}: give exactly one of 'below' or 'above'")
        below = self.number(fields["below"], f"{what}: below") if "below" in fields else None
        above = self.number(fields["above"], f"{what}: above") if "above" in fields else None
        window = (
            self.duration(fields["window"], f"{what}: window")
            if "window" in fields
            else scores.window_ms
        )
        step = (
            self.duration(fields["step"], f"{what}: step") if "step" in fields else scores.step_ms
        )
        if step > window or window % step:
            raise self.fail(node, f"{what}: window must be a whole number of steps")
        min_samples = (
            self.count(fields["min_samples"], f"{what}: min_samples")
            if "min_samples" in fields
            else 30
        )
        if min_samples < 1:
            raise self.fail(fields["min_samples"], f"{what}: min_samples must be at least 1")
        severity = (
            self.choice(fields["severity"], f"{what}: severity", Severity)
            if "severity" in fields
            else Severity.WARNING
        )
        return KeyMoment(
            touchpoint=touchpoint,
            metric=metric,
            below=below,
            above=above,
            window_ms=window,
            step_ms=step,
            min_samples=min_samples,
            severity=severity,
        )

    def messaging(self, node: yaml.Node | None) -> MessagingPolicy:
        if node is None:
            return MessagingPolicy()
        fields = self.mapping(node, "messaging")
        self.only(fields, MESSAGING_KEYS, node)
        default = MessagingPolicy()
        categories = default.categories
        if "categories" in fields:
            categories = frozenset(
                self.choice(item, "messaging.categories", Category)
                for item in self.sequence(fields["categories"], "messaging.categories")
            )
        limits = {
            name: self.count(fields[name], f"messaging.{name}")
            for name in ("max_messages", "max_per_channel")
            if name in fields
        }
        return MessagingPolicy(
            window_ms=self.duration(fields["window"], "messaging.window")
            if "window" in fields
            else default.window_ms,
            max_messages=limits.get("max_messages", default.max_messages),
            max_per_channel=limits.get("max_per_channel", default.max_per_channel),
            categories=categories,
            quiet_hours=self.quiet_hours(fields["quiet_hours"])
            if "quiet_hours" in fields
            else None,
            severity=self.choice(fields["severity"], "messaging.severity", Severity)
            if "severity" in fields
            else default.severity,
        )

    def quiet_hours(self, node: yaml.Node) -> QuietHours:
        fields = self.mapping(node, "messaging.quiet_hours")
        self.only(fields, {"start", "end", "timezone"}, node)
        for required in ("start", "end"):
            if required not in fields:
                raise self.fail(node, f"messaging.quiet_hours needs {required!r}")
        zone_name = self.scalar(fields["timezone"], "timezone") if "timezone" in fields else "UTC"
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(
                fields.get("timezone", node), f"unknown timezone {zone_name!r}"
            ) from None
        return QuietHours(
            start=self.clock(fields["start"], "quiet_hours.start"),
            end=self.clock(fields["end"], "quiet_hours.end"),
            timezone=zone,
        )

    def clock(self, node: yaml.Node, what: str) -> time:
        text = self.scalar(node, what)
        try:
            moment = time.fromisoformat(text)
        except ValueError:
            raise self.fail(node, f"{what}: {text!r} is not a time of day such as 22:00") from None
        if moment.tzinfo is not None:
            # A local time with an offset cannot be compared with the zone's local clock.
            raise self.fail(
                node, f"{what}: {text!r} has an offset; give the zone in quiet_hours.timezone"
            )
        return moment
