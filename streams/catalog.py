"""The catalog CX ops edit: touchpoints, key moments and standards, journey breaks, messaging."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time
from enum import StrEnum
from functools import reduce
from pathlib import Path
from typing import Any, Protocol, TypeVar
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


DEFAULT_ALPHA = 0.1
# Metrics that get worse as they fall; the others (ces, rates, waiting time) get worse rising.
WORSE_WHEN_LOWER = frozenset({ScoreMetric.NPS, ScoreMetric.CSAT, ScoreMetric.SENTIMENT})


class Detector(StrEnum):
    """How a key moment decides it is degraded."""

    WINDOW = "window"  # each window on its own value (or interval, with `confidence`)
    CUSUM = "cusum"  # evidence piled up over steps: slow drifts
    EWMA_CHART = "ewma_chart"  # an exponentially weighted chart of the steps: slow drifts


class CatalogError(ValueError):
    """A catalog the worker refuses, with the file, line and reason."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CatalogWarning:
    """Something the worker accepts but that is probably a mistake, with its file and line."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: warning: {self.reason}"


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
class Relative:
    """A standard relative to the key moment's own past: worse than its baseline by `change`."""

    change: float  # points of the metric, or a percentage of the baseline's magnitude
    percent: bool
    baseline_ms: int | None  # the window before the judged one; None for an EWMA of windows
    alpha: float = DEFAULT_ALPHA  # weight of the newest window in the EWMA

    def describe(self) -> str:
        amount = f"{self.change:g}%" if self.percent else f"{self.change:g}"
        return f"more than {amount} worse than its {self.baseline_name()} baseline"

    def baseline_name(self) -> str:
        return "EWMA" if self.baseline_ms is None else format_duration(self.baseline_ms)

    def shifted(self, baseline: float, amount: float, worse_when_higher: bool) -> float:
        """The level `amount` (points, or percent of the baseline) worse than the baseline."""
        shift = abs(baseline) * amount / 100 if self.percent else amount
        return baseline + shift if worse_when_higher else baseline - shift


@dataclass(frozen=True, slots=True)
class Drift:
    """A CUSUM or EWMA chart over the steps, in standard errors, for slow drifts."""

    detector: Detector
    limit: float  # CUSUM decision interval h, or EWMA chart width L
    slack: float = 0.5  # CUSUM allowance k per step
    smoothing: float = 0.2  # EWMA chart weight of the newest step


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
    relative: Relative | None = None
    recover_at: float | None = None  # in the standard's own terms; None: the standard itself
    confidence: float | None = None  # None: the value alone decides
    drift: Drift | None = None
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    no_data_after_ms: int | None = None

    @property
    def id(self) -> str:
        return f"{self.touchpoint}/{self.metric.value}"

    @property
    def threshold(self) -> float:
        """The fixed standard; a relative standard has none (its line follows the baseline)."""
        bound = self.below if self.below is not None else self.above
        assert bound is not None
        return bound

    @property
    def worse_when_higher(self) -> bool:
        if self.relative is not None:
            return self.metric not in WORSE_WHEN_LOWER
        return self.above is not None

    @property
    def detector(self) -> Detector:
        return Detector.WINDOW if self.drift is None else self.drift.detector

    def line(self, baseline: float | None) -> float | None:
        """Where degraded begins; None while a relative standard has no baseline yet."""
        if self.relative is None:
            return self.threshold
        if baseline is None:
            return None
        return self.relative.shifted(baseline, self.relative.change, self.worse_when_higher)

    def recover_line(self, baseline: float | None) -> float | None:
        """Where an open incident counts as recovered: `recover_at`, by default the line."""
        if self.recover_at is None:
            return self.line(baseline)
        if self.relative is None:
            return self.recover_at
        if baseline is None:
            return None
        return self.relative.shifted(baseline, self.recover_at, self.worse_when_higher)

    def worse(self, value: float, line: float) -> bool:
        """True when `value` is on the degraded side of `line`."""
        return value > line if self.worse_when_higher else value < line

    def standard(self) -> str:
        if self.relative is not None:
            return self.relative.describe()
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


@dataclass(frozen=True, slots=True)
class JourneyBreak:
    """Customers who reach `source` should reach `target` within `within_ms`; too few do: broken."""

    source: str
    target: str
    within_ms: int
    max_rate: float  # broken share of decided journeys over the window above which it fires
    window_ms: int
    step_ms: int
    min_samples: int
    severity: Severity = Severity.WARNING
    recover_at: float | None = None  # the rate at or below which it resolves; None: max_rate

    @property
    def id(self) -> str:
        """The subject of its alerts and the key of its state: `A -> B`."""
        return f"{self.source} -> {self.target}"

    @property
    def recover_rate(self) -> float:
        return self.max_rate if self.recover_at is None else self.recover_at


@dataclass(frozen=True, slots=True, kw_only=True)
class GapRule:
    """One group's score against another's, window by window.

    The gap is taken in the direction that is worse for the metric, so a positive gap is
    always the judged group doing worse. An incident fires when the gap is past `max_gap`
    (with `confidence`, its whole interval) and resolves at or under `recover_at`.
    """

    metric: ScoreMetric
    max_gap: float
    window_ms: int
    step_ms: int
    min_samples: int  # for each of the two groups
    severity: Severity = Severity.WARNING
    recover_at: float | None = None  # the gap at or under which it resolves; None: max_gap
    confidence: float | None = None

    @property
    def recover_gap(self) -> float:
        return self.max_gap if self.recover_at is None else self.recover_at

    @property
    def worse_when_higher(self) -> bool:
        return self.metric not in WORSE_WHEN_LOWER


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelConsistency(GapRule):
    """Each channel of a journey stage against the stage's other channels, pooled."""

    stage: Stage

    @property
    def id(self) -> str:
        """The key of its state and the start of its alerts' subjects: `stage/metric`."""
        return f"{self.stage.value}/{self.metric.value}"


# Survey figures a customer gives: what messaging fatigue can show in.
FATIGUE_METRICS = (ScoreMetric.NPS, ScoreMetric.CSAT, ScoreMetric.CES, ScoreMetric.SENTIMENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagingFatigue(GapRule):
    """Answers of heavily messaged customers against everyone else's.

    An answer is in the messaged cohort when its customer had at least `messages` counted
    messages in the messaging policy's window at the instant they answered.
    """

    messages: int

    @property
    def id(self) -> str:
        """The key of its state and its alerts' subject: the metric."""
        return self.metric.value


@dataclass(frozen=True)
class Catalog:
    touchpoints: dict[str, Stage] = field(default_factory=dict)
    key_moments: tuple[KeyMoment, ...] = ()
    messaging: MessagingPolicy = field(default_factory=MessagingPolicy)
    scores: ScoreWindow = field(default_factory=ScoreWindow)
    breaks: tuple[JourneyBreak, ...] = ()
    consistency: tuple[ChannelConsistency, ...] = ()
    fatigue: tuple[MessagingFatigue, ...] = ()
    warnings: tuple[CatalogWarning, ...] = field(default=(), compare=False)

    def consistency_by_stage(self) -> dict[Stage, tuple[ChannelConsistency, ...]]:
        """The consistency rules of each journey stage watched, in catalog order."""
        grouped: dict[Stage, list[ChannelConsistency]] = {}
        for rule in self.consistency:
            grouped.setdefault(rule.stage, []).append(rule)
        return {stage: tuple(rules) for stage, rules in grouped.items()}

    def key_moments_for(self, touchpoint: str) -> tuple[KeyMoment, ...]:
        return self._moments_by_touchpoint().get(touchpoint, ())

    def bucket_ms(self, touchpoint: str) -> int:
        """The finest granularity every window of this touchpoint is a whole multiple of."""
        sizes = [self.scores.window_ms, self.scores.step_ms]
        for moment in self.key_moments_for(touchpoint):
            sizes += [moment.window_ms, moment.step_ms, _baseline_ms(moment)]
        return reduce(math.gcd, sizes)

    def retention_ms(self, touchpoint: str) -> int:
        """The longest span a verdict looks back over: a window and the baseline before it."""
        longest = max(
            [
                self.scores.window_ms,
                *(m.window_ms + _baseline_ms(m) for m in self.key_moments_for(touchpoint)),
            ]
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


def _baseline_ms(moment: KeyMoment) -> int:
    relative = moment.relative
    return 0 if relative is None or relative.baseline_ms is None else relative.baseline_ms


def _one_of(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def describe_catalog(catalog: Catalog, source: str) -> list[str]:
    """What the catalog was understood to say, a line each, as `check-catalog` prints it."""
    lines = [
        f"{source}: {len(catalog.touchpoints)} touchpoints, {len(catalog.key_moments)} key "
        f"moments, {len(catalog.breaks)} journey breaks"
        + (f", {len(catalog.consistency)} consistency rules" if catalog.consistency else "")
        + (f", {len(catalog.fatigue)} fatigue rules" if catalog.fatigue else ""),
        f"scores: {_windows(catalog.scores.window_ms, catalog.scores.step_ms)}, judged "
        f"{format_duration(catalog.scores.grace_ms)} after a window ends, so late events "
        "still count",
    ]
    if catalog.touchpoints:
        lines.append("touchpoints by stage:")
        for stage in Stage:
            names = [name for name, of in catalog.touchpoints.items() if of is stage]
            if names:
                lines.append(f"  {stage.value}: {', '.join(names)}")
    if catalog.key_moments:
        lines.append("key moments:")
        lines += [f"  {_describe_moment(moment)}" for moment in catalog.key_moments]
    if catalog.breaks:
        lines.append("journey breaks:")
        lines += [f"  {_describe_break(journey)}" for journey in catalog.breaks]
    if catalog.consistency:
        lines.append("channel consistency:")
        lines += [f"  {_describe_consistency(rule)}" for rule in catalog.consistency]
    if catalog.fatigue:
        lines.append("messaging fatigue:")
        lines += [f"  {_describe_fatigue(rule, catalog.messaging)}" for rule in catalog.fatigue]
    policy = catalog.messaging
    categories = " or ".join(sorted(category.value for category in policy.categories))
    quiet = policy.quiet_hours
    lines.append(
        f"messaging: at most {policy.max_messages} {categories} messages a customer in any "
        f"{format_duration(policy.window_ms)}, {policy.max_per_channel} on any one channel, "
        + (f"none in quiet hours {quiet.describe()}" if quiet else "no quiet hours")
        + f"; severity {policy.severity.value}"
    )
    return lines


def _windows(window_ms: int, step_ms: int) -> str:
    return f"{format_duration(window_ms)} windows every {format_duration(step_ms)}"


def _describe_moment(moment: KeyMoment) -> str:
    parts = [f"degraded when {moment.standard()}"]
    if moment.confidence is not None:
        parts.append(f"with {moment.confidence:g} confidence")
    if moment.drift is not None:
        parts.append(f"by {moment.drift.detector.value} (limit {moment.drift.limit:g})")
    parts += [_windows(moment.window_ms, moment.step_ms), f"min {moment.min_samples} samples"]
    if moment.for_ms:
        parts.append(f"for {format_duration(moment.for_ms)}")
    if moment.recover_at is not None:
        parts.append(f"recovers at {moment.recover_at:g}")
    if moment.keep_firing_for_ms:
        parts.append(f"keeps firing for {format_duration(moment.keep_firing_for_ms)}")
    if moment.no_data_after_ms is not None:
        parts.append(f"no_data after {format_duration(moment.no_data_after_ms)}")
    return f"{moment.id}: {', '.join(parts)}; severity {moment.severity.value}"


def _describe_break(journey: JourneyBreak) -> str:
    parts = [
        f"broken when more than {journey.max_rate:g} of customers do not go on within "
        f"{format_duration(journey.within_ms)}",
        _windows(journey.window_ms, journey.step_ms),
        f"min {journey.min_samples} samples",
    ]
    if journey.recover_at is not None:
        parts.append(f"recovers at {journey.recover_at:g}")
    return f"{journey.id}: {', '.join(parts)}; severity {journey.severity.value}"


def _describe_consistency(rule: ChannelConsistency) -> str:
    verdict = (
        f"inconsistent when a channel's {rule.metric.value} is worse than the stage's other "
        f"channels by more than {rule.max_gap:g}"
    )
    return _describe_gap(rule, verdict, "for the channel and for the rest")


def _describe_fatigue(rule: MessagingFatigue, policy: MessagingPolicy) -> str:
    verdict = (
        f"fatigued when the {rule.metric.value} of customers who had at least {rule.messages} "
        f"counted messages in the {format_duration(policy.window_ms)} before answering is "
        f"worse than the others' by more than {rule.max_gap:g}"
    )
    return _describe_gap(rule, verdict, "in each cohort")


def _describe_gap(rule: ChannelConsistency | MessagingFatigue, verdict: str, samples: str) -> str:
    parts = [verdict]
    if rule.confidence is not None:
        parts.append(f"with {rule.confidence:g} confidence")
    parts += [_windows(rule.window_ms, rule.step_ms), f"min {rule.min_samples} samples {samples}"]
    if rule.recover_at is not None:
        parts.append(f"recovers at {rule.recover_at:g}")
    return f"{rule.id}: {', '.join(parts)}; severity {rule.severity.value}"


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
    reader = _Reader(source)
    if root is None or (isinstance(root, yaml.MappingNode) and not root.value):
        # An empty file is a wrong path or a truncated copy far more often than a choice:
        # on the defaults alone the worker would watch no key moment and say nothing.
        line = None if root is None else root.start_mark.line + 1
        raise CatalogError(
            source,
            line,
            "the catalog is empty: declare touchpoints, key_moments, breaks or messaging "
            "(see deploy/catalog.example.yaml)",
        )
    sections = reader.mapping(root, "the catalog")
    reader.only(
        sections,
        {"touchpoints", "key_moments", "breaks", "consistency", "fatigue", "messaging", "scores"},
        root,
    )
    scores = reader.score_window(sections.get("scores"))
    touchpoints = reader.touchpoints(sections.get("touchpoints"))
    key_moments = reader.unique(
        sections.get("key_moments"),
        "key_moments",
        "key moment",
        lambda node: reader.key_moment(node, scores),
    )
    breaks = reader.unique(
        sections.get("breaks"), "breaks", "break", lambda node: reader.journey_break(node, scores)
    )
    consistency = reader.unique(
        sections.get("consistency"),
        "consistency",
        "consistency",
        lambda node: reader.channel_consistency(node, scores, touchpoints),
    )
    fatigue = reader.unique(
        sections.get("fatigue"),
        "fatigue",
        "fatigue",
        lambda node: reader.messaging_fatigue(node, scores),
    )
    reader.check_declared()
    return Catalog(
        touchpoints=touchpoints,
        key_moments=key_moments,
        messaging=reader.messaging(sections.get("messaging")),
        scores=scores,
        breaks=breaks,
        consistency=consistency,
        fatigue=fatigue,
        warnings=tuple(reader.warnings),
    )


STANDARD_KEYS = ("below", "above", "drop", "drop_pct", "rise", "rise_pct")
KEY_MOMENT_KEYS = {
    "touchpoint",
    "metric",
    *STANDARD_KEYS,
    "baseline",
    "alpha",
    "recover_at",
    "confidence",
    "detector",
    "limit",
    "slack",
    "smoothing",
    "for",
    "keep_firing_for",
    "no_data_after",
    "window",
    "step",
    "min_samples",
    "severity",
}
BREAK_KEYS = {
    "from",
    "to",
    "within",
    "max_rate",
    "recover_at",
    "window",
    "step",
    "min_samples",
    "severity",
}
CONSISTENCY_KEYS = {
    "stage",
    "metric",
    "max_gap",
    "recover_at",
    "window",
    "step",
    "min_samples",
    "confidence",
    "severity",
}
FATIGUE_KEYS = (CONSISTENCY_KEYS - {"stage"}) | {"messages"}
DRIFT_LIMITS = {Detector.CUSUM: 5.0, Detector.EWMA_CHART: 3.0}
MESSAGING_KEYS = {
    "window",
    "max_messages",
    "max_per_channel",
    "categories",
    "quiet_hours",
    "severity",
}


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


Identified = TypeVar("Identified", bound=_HasId)


class _Reader:
    """Walks YAML nodes so that every refusal can name the line it is about."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.declared: list[str] = []
        # Touchpoints the key moments and breaks name, with their node and what names them.
        self.named: list[tuple[str, yaml.Node, str]] = []
        self.warnings: list[CatalogWarning] = []

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

    def check_declared(self) -> None:
        """Warn of a key moment or break on a touchpoint the catalog does not declare.

        Only a warning: such a touchpoint is judged all the same (it is only not exported as
        metrics), and refusing it would stop workers that started on this catalog before.
        A catalog that declares no touchpoint has nothing to check against.
        """
        if not self.declared:
            return
        for name, node, what in self.named:
            if name in self.declared:
                continue
            (nearest,) = difflib.get_close_matches(name, self.declared, n=1, cutoff=0)
            self.warnings.append(
                CatalogWarning(
                    self.source,
                    node.start_mark.line + 1,
                    f"{what}: touchpoint {name!r} is not declared in touchpoints "
                    f"(the nearest declared is {nearest!r})",
                )
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
            self.declared.append(name)
            fields = self.mapping(entry, f"touchpoint {name}")
            self.only(fields, {"stage"}, entry)
            if "stage" in fields:
                stages[name] = self.choice(fields["stage"], f"touchpoint {name}: stage", Stage)
        return stages

    def unique(
        self,
        node: yaml.Node | None,
        section: str,
        what: str,
        read: Callable[[yaml.Node], Identified],
    ) -> tuple[Identified, ...]:
        """The entries of one of the catalog's lists, each read by `read`; two with the same
        id are refused on the second's line."""
        if node is None:
            return ()
        found: dict[str, Identified] = {}
        for entry in self.sequence(node, section):
            item = read(entry)
            if item.id in found:
                raise self.fail(entry, f"{what} {item.id} is declared twice")
            found[item.id] = item
        return tuple(found.values())

    def key_moment(self, node: yaml.Node, scores: ScoreWindow) -> KeyMoment:
        fields = self.mapping(node, "a key moment")
        self.only(fields, KEY_MOMENT_KEYS, node)
        for required in ("touchpoint", "metric"):
            if required not in fields:
                raise self.fail(node, f"a key moment needs {required!r}")
        touchpoint = self.scalar(fields["touchpoint"], "touchpoint")
        what = f"key moment {touchpoint}"
        self.named.append((touchpoint, fields["touchpoint"], what))
        metric: ScoreMetric = self.choice(fields["metric"], f"{what}: metric", ScoreMetric)
        given = [key for key in STANDARD_KEYS if key in fields]
        if len(given) != 1:
            raise self.fail(node, f"{what}: give exactly one of {_one_of(STANDARD_KEYS)}")
        (standard,) = given
        level = self.number(fields[standard], f"{what}: {standard}")
        window, step = self.window_and_step(node, fields, scores, what)
        relative = None
        if standard in ("below", "above"):
            for key in ("baseline", "alpha"):
                if key in fields:
                    raise self.fail(
                        fields[key], f"{what}: {key!r} needs a standard relative to a baseline"
                    )
        else:
            relative = self.relative(
                fields, standard, change=level, metric=metric, window=window, step=step, what=what
            )
        recover_at = self.recover_at(fields, standard, level, what)
        min_samples = self.min_samples(fields, what)
        severity = self.severity(fields, what)
        no_data_after = None
        if "no_data_after" in fields:
            no_data_after = self.duration(fields["no_data_after"], f"{what}: no_data_after")
            if no_data_after % step:
                raise self.fail(
                    fields["no_data_after"],
                    f"{what}: no_data_after must be a whole number of steps "
                    f"({format_duration(step)})",
                )
        return KeyMoment(
            touchpoint=touchpoint,
            metric=metric,
            below=level if standard == "below" else None,
            above=level if standard == "above" else None,
            window_ms=window,
            step_ms=step,
            min_samples=min_samples,
            severity=severity,
            relative=relative,
            recover_at=recover_at,
            confidence=self.confidence(fields, what),
            drift=self.drift(fields, what),
            for_ms=self.duration(fields["for"], f"{what}: for") if "for" in fields else 0,
            keep_firing_for_ms=self.duration(fields["keep_firing_for"], f"{what}: keep_firing_for")
            if "keep_firing_for" in fields
            else 0,
            no_data_after_ms=no_data_after,
        )

    def window_and_step(
        self, node: yaml.Node, fields: dict[str, yaml.Node], scores: ScoreWindow, what: str
    ) -> tuple[int, int]:
        """A rolling window and its step; by default the scoring window's."""
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
        return window, step

    def min_samples(self, fields: dict[str, yaml.Node], what: str) -> int:
        if "min_samples" not in fields:
            return 30
        min_samples = self.count(fields["min_samples"], f"{what}: min_samples")
        if min_samples < 1:
            raise self.fail(fields["min_samples"], f"{what}: min_samples must be at least 1")
        return min_samples

    def severity(self, fields: dict[str, yaml.Node], what: str) -> Severity:
        if "severity" not in fields:
            return Severity.WARNING
        severity: Severity = self.choice(fields["severity"], f"{what}: severity", Severity)
        return severity

    def journey_break(self, node: yaml.Node, scores: ScoreWindow) -> JourneyBreak:
        fields = self.mapping(node, "a break")
        self.only(fields, BREAK_KEYS, node)
        for required in ("from", "to"):
            if required not in fields:
                raise self.fail(node, f"a break needs {required!r}")
        source = self.scalar(fields["from"], "break: from")
        target = self.scalar(fields["to"], "break: to")
        what = f"break {source} -> {target}"
        self.named += [(source, fields["from"], what), (target, fields["to"], what)]
        for required in ("within", "max_rate"):
            if required not in fields:
                raise self.fail(node, f"{what} needs {required!r}")
        if source == target:
            raise self.fail(fields["to"], f"{what}: 'to' must be another touchpoint than 'from'")
        within = self.duration(fields["within"], f"{what}: within")
        max_rate = self.number(fields["max_rate"], f"{what}: max_rate")
        if not 0 <= max_rate < 1:
            raise self.fail(fields["max_rate"], f"{what}: max_rate must be at least 0 and below 1")
        recover_at = None
        if "recover_at" in fields:
            recover_at = self.number(fields["recover_at"], f"{what}: recover_at")
            if not 0 <= recover_at <= max_rate:
                raise self.fail(
                    fields["recover_at"],
                    f"{what}: recover_at must be between 0 and max_rate ({max_rate:g})",
                )
        window, step = self.window_and_step(node, fields, scores, what)
        min_samples = self.min_samples(fields, what)
        return JourneyBreak(
            source=source,
            target=target,
            within_ms=within,
            max_rate=max_rate,
            window_ms=window,
            step_ms=step,
            min_samples=min_samples,
            severity=self.severity(fields, what),
            recover_at=recover_at,
        )

    def channel_consistency(
        self, node: yaml.Node, scores: ScoreWindow, touchpoints: dict[str, Stage]
    ) -> ChannelConsistency:
        fields = self.mapping(node, "a consistency rule")
        self.only(fields, CONSISTENCY_KEYS, node)
        for required in ("stage", "metric", "max_gap"):
            if required not in fields:
                raise self.fail(node, f"a consistency rule needs {required!r}")
        stage: Stage = self.choice(fields["stage"], "consistency: stage", Stage)
        what = f"consistency {stage.value}"
        if stage not in touchpoints.values():
            raise self.fail(
                fields["stage"],
                f"{what}: no touchpoint is declared in stage {stage.value!r}; declare its "
                "touchpoints under touchpoints with their stage",
            )
        metric: ScoreMetric = self.choice(fields["metric"], f"{what}: metric", ScoreMetric)
        return ChannelConsistency(
            stage=stage, **self.gap_rule(node, fields, scores, metric, f"{what}/{metric.value}")
        )

    def messaging_fatigue(self, node: yaml.Node, scores: ScoreWindow) -> MessagingFatigue:
        fields = self.mapping(node, "a fatigue rule")
        self.only(fields, FATIGUE_KEYS, node)
        for required in ("metric", "messages", "max_gap"):
            if required not in fields:
                raise self.fail(node, f"a fatigue rule needs {required!r}")
        metric: ScoreMetric = self.choice(fields["metric"], "fatigue: metric", ScoreMetric)
        what = f"fatigue {metric.value}"
        if metric not in FATIGUE_METRICS:
            raise self.fail(
                fields["metric"],
                f"{what}: fatigue shows in survey answers: metric must be "
                + ", ".join(m.value for m in FATIGUE_METRICS),
            )
        messages = self.count(fields["messages"], f"{what}: messages")
        if messages < 1:
            raise self.fail(fields["messages"], f"{what}: messages must be at least 1")
        return MessagingFatigue(
            messages=messages, **self.gap_rule(node, fields, scores, metric, what)
        )

    def gap_rule(
        self,
        node: yaml.Node,
        fields: dict[str, yaml.Node],
        scores: ScoreWindow,
        metric: ScoreMetric,
        what: str,
    ) -> dict[str, Any]:
        """What every rule comparing two groups' scores says, checked: the GapRule fields."""
        max_gap = self.number(fields["max_gap"], f"{what}: max_gap")
        if max_gap < 0:
            raise self.fail(fields["max_gap"], f"{what}: max_gap must not be negative")
        recover_at = None
        if "recover_at" in fields:
            recover_at = self.number(fields["recover_at"], f"{what}: recover_at")
            if not 0 <= recover_at <= max_gap:
                raise self.fail(
                    fields["recover_at"], f"{what}: recover_at must be between 0 and {max_gap:g}"
                )
        window, step = self.window_and_step(node, fields, scores, what)
        return {
            "metric": metric,
            "max_gap": max_gap,
            "window_ms": window,
            "step_ms": step,
            "min_samples": self.min_samples(fields, what),
            "severity": self.severity(fields, what),
            "recover_at": recover_at,
            "confidence": self.confidence(fields, what),
        }

    def relative(
        self,
        fields: dict[str, yaml.Node],
        standard: str,
        *,
        change: float,
        metric: ScoreMetric,
        window: int,
        step: int,
        what: str,
    ) -> Relative:
        node = fields[standard]
        falls = standard.startswith("drop")
        if falls != (metric in WORSE_WHEN_LOWER):
            direction, keys = (
                ("rising", "rise or rise_pct") if falls else ("falling", "drop or drop_pct")
            )
            raise self.fail(node, f"{what}: {metric.value} gets worse by {direction}: use {keys}")
        if change <= 0:
            raise self.fail(node, f"{what}: {standard} must be more than 0")
        if "baseline" not in fields:
            raise self.fail(
                node, f"{what}: {standard} needs a 'baseline': a longer window such as 7d, or ewma"
            )
        baseline_node = fields["baseline"]
        baseline_ms: int | None = None
        if self.scalar(baseline_node, f"{what}: baseline") != "ewma":
            baseline_ms = self.duration(baseline_node, f"{what}: baseline")
            if baseline_ms <= window or baseline_ms % step:
                raise self.fail(
                    baseline_node,
                    f"{what}: baseline must be longer than the window ({format_duration(window)}) "
                    f"and a whole number of steps ({format_duration(step)}), or ewma",
                )
        alpha = DEFAULT_ALPHA
        if "alpha" in fields:
            if baseline_ms is not None:
                raise self.fail(fields["alpha"], f"{what}: 'alpha' is the weight of baseline: ewma")
            alpha = self.number(fields["alpha"], f"{what}: alpha")
            if not 0 < alpha <= 1:
                raise self.fail(fields["alpha"], f"{what}: alpha must be more than 0 and at most 1")
        return Relative(
            change=change, percent=standard.endswith("_pct"), baseline_ms=baseline_ms, alpha=alpha
        )

    def recover_at(
        self, fields: dict[str, yaml.Node], standard: str, level: float, what: str
    ) -> float | None:
        if "recover_at" not in fields:
            return None
        node = fields["recover_at"]
        recover = self.number(node, f"{what}: recover_at")
        if standard == "below" and recover < level:
            raise self.fail(node, f"{what}: recover_at must not be below the standard {level:g}")
        if standard == "above" and recover > level:
            raise self.fail(node, f"{what}: recover_at must not be above the standard {level:g}")
        if standard not in ("below", "above") and not 0 <= recover <= level:
            raise self.fail(
                node, f"{what}: recover_at is a {standard} too: between 0 and {level:g}"
            )
        return recover

    def confidence(self, fields: dict[str, yaml.Node], what: str) -> float | None:
        if "confidence" not in fields:
            return None
        confidence = self.number(fields["confidence"], f"{what}: confidence")
        if not 0.5 <= confidence < 1:
            raise self.fail(
                fields["confidence"],
                f"{what}: confidence must be at least 0.5 and below 1, such as 0.95",
            )
        return confidence

    def drift(self, fields: dict[str, yaml.Node], what: str) -> Drift | None:
        detector: Detector = (
            self.choice(fields["detector"], f"{what}: detector", Detector)
            if "detector" in fields
            else Detector.WINDOW
        )
        owners = {
            "limit": (Detector.CUSUM, Detector.EWMA_CHART),
            "slack": (Detector.CUSUM,),
            "smoothing": (Detector.EWMA_CHART,),
        }
        settings: dict[str, float] = {}
        for key, detectors in owners.items():
            if key not in fields:
                continue
            if detector not in detectors:
                raise self.fail(
                    fields[key],
                    f"{what}: {key!r} belongs to detector: {' or '.join(detectors)}",
                )
            settings[key] = self.number(fields[key], f"{what}: {key}")
        if detector is Detector.WINDOW:
            return None
        drift = Drift(detector=detector, **({"limit": DRIFT_LIMITS[detector]} | settings))
        if drift.limit <= 0 or drift.slack < 0 or not 0 < drift.smoothing <= 1:
            key = next(k for k in ("limit", "slack", "smoothing") if k in settings)
            raise self.fail(
                fields[key],
                f"{what}: limit must be more than 0, slack at least 0, smoothing "
                "more than 0 and at most 1",
            )
        return drift

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
