"""Deterministic generator of realistic multi-channel customer journeys (no Kafka, no clock)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from random import Random
from typing import Any, Literal

import orjson

__all__ = [
    "BROKEN_JOURNEY",
    "CONTACT_TYPE_BY_CHANNEL",
    "MARKETING_TOUCHPOINT_BY_CHANNEL",
    "TOUCHPOINTS",
    "Role",
    "SimulatedRecord",
    "SimulationConfig",
    "TouchpointSpec",
    "generate",
]

Role = Literal["touchpoint_events", "survey_answers", "identity_links"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SHANGHAI = timezone(timedelta(hours=8))
_SHANGHAI_OFFSET_MS = 8 * HOUR_MS
_EPOCH_SHANGHAI = datetime(1970, 1, 1, 8, 0, tzinfo=SHANGHAI)
_QUIET_START_MS = 22 * HOUR_MS  # 22:00 Asia/Shanghai
_QUIET_END_MS = 8 * HOUR_MS  # 08:00 Asia/Shanghai
_SLOW_MS = 3_000  # most visitors leave a page that does not load in 3 s
_MARKETING_PER_DAY = 2  # hard frequency cap of normal traffic, any rolling 24 h
FATIGUED_AFTER = 4  # marketing messages in 24 h that make a customer answer worse (--fatigue)
_CAMPAIGN_SHARE = 2  # --fatigue's campaign reaches one customer in this many
_CAMPAIGN_GAP_MS = 60_000  # between one customer's campaign messages


@dataclass(frozen=True, slots=True)
class TouchpointSpec:
    """How the simulator treats one touchpoint."""

    channel: str
    stage: str
    direction: str = "inbound"
    category: str | None = None
    median_ms: float | None = None  # median waiting/loading time (log-normal), None: not measured
    sigma: float = 0.5
    failure: float = 0.0  # normal failure rate


TOUCHPOINTS: dict[str, TouchpointSpec] = {
    "douyin.ad": TouchpointSpec("social", "awareness"),
    "xiaohongshu.note": TouchpointSpec("social", "awareness"),
    "web.product_page": TouchpointSpec("web", "interest", median_ms=1_200, sigma=0.6, failure=0.01),
    "mini_program.product": TouchpointSpec("mini_program", "interest", median_ms=900, failure=0.01),
    "app.login": TouchpointSpec("app", "intent", median_ms=800, failure=0.02),
    "app.cart": TouchpointSpec("app", "intent", median_ms=400, failure=0.005),
    "checkout.payment": TouchpointSpec("app", "purchase", median_ms=1_500, failure=0.03),
    "store.visit": TouchpointSpec("store", "purchase", median_ms=90_000, sigma=0.8),
    "order.confirmation": TouchpointSpec(
        "sms", "purchase", direction="outbound", category="transactional", failure=0.02
    ),
    "delivery.tracking": TouchpointSpec("app", "use", median_ms=700, failure=0.03),
    "call_center.support": TouchpointSpec(
        "call_center", "service", median_ms=60_000, sigma=0.9, failure=0.12
    ),
    "marketing.sms": TouchpointSpec(
        "sms", "retention", direction="outbound", category="marketing", failure=0.03
    ),
    "marketing.email": TouchpointSpec(
        "email", "retention", direction="outbound", category="marketing", failure=0.03
    ),
    "marketing.push": TouchpointSpec(
        "app_push", "retention", direction="outbound", category="marketing", failure=0.03
    ),
    "wechat.official_account": TouchpointSpec(
        "wechat", "retention", direction="outbound", category="marketing", failure=0.01
    ),
}

# Checkout is paid in the app or the mini program: its answers carry either channel.
_ANSWER_CHANNELS: dict[str, tuple[str, ...]] = {"purchase": ("app", "mini_program")}

MARKETING_TOUCHPOINT_BY_CHANNEL: dict[str, str] = {
    "sms": "marketing.sms",
    "email": "marketing.email",
    "app_push": "marketing.push",
    "wechat": "wechat.official_account",
}
CONTACT_TYPE_BY_CHANNEL: dict[str, str] = {
    "sms": "phone",
    "email": "email",
    "app_push": "app_user",
    "wechat": "wechat_openid",
}
_MARKETING_CHANNELS = tuple(MARKETING_TOUCHPOINT_BY_CHANNEL)
# The hand-off a broken journey loses (the next channel does not know what the customer did
# in the last, so the customer has to start again), and the share of customers who would
# have gone on and do not while it is broken.
BROKEN_JOURNEY = ("app.cart", "checkout.payment")
_BROKEN_SHARE = 0.5
_CONTACT_ONLY_SHARE = 0.15  # outbound messages that carry only a contact


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Same config, same bytes.

    `duplicate_ratio`: each touchpoint event / survey answer is re-emitted byte-identically
    with this probability, 0.2-20 s later (the record's `occurred_at_ms` is then the
    re-emission time; the value still carries the original time).
    `invalid_ratio`: after each touchpoint event / survey answer a malformed record is added
    with this probability, so invalid records ~= invalid_ratio x valid events and answers.
    `degrade_touchpoint` without `degrade_from_ms` degrades it from `start_ms`, and without
    `degrade_until_ms` to the end: a degradation that ends lets its incident resolve.
    `break_from_ms`: from then (to `break_until_ms`, or the end) half the customers who put
    something in the app's cart and would have gone on to pay do not (BROKEN_JOURNEY).
    `inconsistent_channel` (stage, channel): from `degrade_from_ms` (or the start) to
    `degrade_until_ms` (or the end), customers who answer a survey about a touchpoint of
    that stage after using it on that channel answer as after a bad experience.
    `fatigue`: when that span starts, a campaign sends half the customers FATIGUED_AFTER
    marketing messages a minute apart (and none of the usual ones from a day before the
    span to its end); over the span, a customer with FATIGUED_AFTER or more marketing
    messages in the 24 h before answering a survey answers one notch worse (as after a
    mediocre experience when it was good, a bad one when it was mediocre).
    """

    start_ms: int
    seed: int = 7
    customers: int = 2_000
    duration_ms: int = 2 * HOUR_MS
    journeys_per_hour: int = 6_000
    degrade_touchpoint: str | None = None
    degrade_from_ms: int | None = None
    degrade_until_ms: int | None = None
    over_messaged_customers: int = 0
    break_from_ms: int | None = None
    break_until_ms: int | None = None
    duplicate_ratio: float = 0.0
    invalid_ratio: float = 0.0
    inconsistent_channel: tuple[str, str] | None = None
    fatigue: bool = False

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError("customers must be at least 1")
        if self.duration_ms <= 0:
            raise ValueError("duration_ms must be positive")
        if self.journeys_per_hour < 0 or self.over_messaged_customers < 0:
            raise ValueError("journeys_per_hour and over_messaged_customers must not be negative")
        for name in ("duplicate_ratio", "invalid_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.degrade_touchpoint is not None and self.degrade_touchpoint not in TOUCHPOINTS:
            raise ValueError(f"unknown touchpoint {self.degrade_touchpoint!r}")
        if self.inconsistent_channel is not None:
            stage, channel = self.inconsistent_channel
            channels = {spec.channel for spec in TOUCHPOINTS.values() if spec.stage == stage}
            channels |= set(_ANSWER_CHANNELS.get(stage, ()))
            if not channels:
                raise ValueError(f"no simulated touchpoint is in stage {stage!r}")
            if channel not in channels:
                raise ValueError(
                    f"stage {stage!r} is simulated on {', '.join(sorted(channels))}, "
                    f"not {channel!r}"
                )


@dataclass(frozen=True, slots=True)
class SimulatedRecord:
    """One message to publish: its topic role, Kafka key, value bytes and event time."""

    role: Role
    key: bytes
    value: bytes
    occurred_at_ms: int


def generate(config: SimulationConfig) -> Iterator[SimulatedRecord]:
    """Yield the simulated records of `config` in event-time order."""
    return _Simulation(config).run()


# --- survey score distributions (weights over the metric's range) --------------------------

_NPS_GOOD = (0.5, 0.5, 0.5, 1, 1.5, 2, 4, 12, 20, 27, 31)  # NPS +48
_NPS_MEH = (3, 2, 3, 5, 7, 10, 14, 20, 17, 11, 8)  # NPS -25
_NPS_BAD = (10, 6, 8, 10, 11, 12, 13, 12, 8, 6, 4)  # NPS -60
_CSAT_GOOD = (2, 3, 10, 35, 50)
_CSAT_MEH = (8, 15, 30, 30, 17)
_CSAT_BAD = (35, 30, 20, 10, 5)
_CES_GOOD = (30, 35, 18, 9, 5, 2, 1)
_CES_MEH = (8, 15, 22, 25, 15, 10, 5)
_CES_BAD = (2, 4, 8, 16, 25, 25, 20)

_SCALES: dict[str, tuple[int, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]]] = {
    "nps": (0, (_NPS_GOOD, _NPS_MEH, _NPS_BAD)),
    "csat": (1, (_CSAT_GOOD, _CSAT_MEH, _CSAT_BAD)),
    "ces": (1, (_CES_GOOD, _CES_MEH, _CES_BAD)),
}


def _cumulative(weights: tuple[float, ...]) -> tuple[float, ...]:
    total = 0.0
    out: list[float] = []
    for weight in weights:
        total += weight
        out.append(total)
    return tuple(out)


_CUM_SCALES: dict[str, tuple[int, tuple[tuple[float, ...], ...]]] = {
    metric: (low, tuple(_cumulative(w) for w in dists)) for metric, (low, dists) in _SCALES.items()
}


def _sentiment(metric: str, score: int) -> str:
    if metric == "nps":
        return "pos" if score >= 9 else ("neu" if score >= 7 else "neg")
    if metric == "csat":
        return "pos" if score >= 4 else ("neu" if score == 3 else "neg")
    return "pos" if score <= 2 else ("neu" if score <= 4 else "neg")  # ces: lower is better


# --- comments: simplified Chinese, traditional Chinese, English; by topic and sentiment ----

_Pool = dict[str, tuple[str, ...]]
# Chinese text is written with ASCII commas here (ruff RUF001) and given its full-width
# comma (U+FF0C) below.
_COMMENTS_SRC: dict[tuple[str, str], _Pool] = {
    ("payment", "pos"): {
        "zh-CN": ("付款很顺利,几秒钟就好了", "支付体验很好,一次就成功", "结账流程简单清楚"),
        "zh-TW": ("付款很順利,幾秒鐘就好了", "結帳流程簡單清楚"),
        "en": ("Payment went through in seconds.", "Smooth and simple checkout."),
    },
    ("payment", "neu"): {
        "zh-CN": ("支付还行,就是要多点几下", "付款速度一般"),
        "zh-TW": ("付款還可以,就是要多按幾下",),
        "en": ("Checkout was fine, a bit slow.", "OK, nothing special."),
    },
    ("payment", "neg"): {
        "zh-CN": (
            "支付一直失败,太让人失望了",
            "付款页面卡了很久,差点放弃",
            "扣款了订单却显示未支付",
        ),
        "zh-TW": ("付款一直失敗,太令人失望了", "付款頁面卡了很久,差點放棄"),
        "en": (
            "Payment kept failing, very frustrating.",
            "The payment page froze, I almost gave up.",
        ),
    },
    ("login", "pos"): {
        "zh-CN": ("登录很快,很方便", "一键登录很省事"),
        "zh-TW": ("登入很快,很方便",),
        "en": ("Logging in was quick and easy.",),
    },
    ("login", "neu"): {
        "zh-CN": ("登录还可以,偶尔要输验证码",),
        "zh-TW": ("登入還可以,偶爾要輸入驗證碼",),
        "en": ("Login was okay.",),
    },
    ("login", "neg"): {
        "zh-CN": ("验证码一直收不到,登录太麻烦了", "登录转圈半天进不去"),
        "zh-TW": ("驗證碼一直收不到,登入太麻煩了",),
        "en": ("Couldn't log in, the code never arrived.", "The login screen just kept spinning."),
    },
    ("delivery", "pos"): {
        "zh-CN": ("物流很快,第二天就到了", "包装很好,物流信息很清楚"),
        "zh-TW": ("物流很快,隔天就到了",),
        "en": ("Fast delivery, arrived the next day.", "Tracking was clear and accurate."),
    },
    ("delivery", "neu"): {
        "zh-CN": ("物流信息更新有点慢",),
        "zh-TW": ("物流資訊更新有點慢",),
        "en": ("Tracking updates are a bit slow.",),
    },
    ("delivery", "neg"): {
        "zh-CN": ("快递一直没更新,不知道货在哪", "说好两天到,等了一个星期"),
        "zh-TW": ("快遞一直沒更新,不知道貨在哪",),
        "en": ("Tracking hasn't updated for days, no idea where my parcel is.",),
    },
    ("support", "pos"): {
        "zh-CN": ("客服很耐心,问题一次就解决了", "客服态度很好,回复很快"),
        "zh-TW": ("客服很有耐心,問題一次就解決了",),
        "en": ("The agent was patient and solved it on the first call.",),
    },
    ("support", "neu"): {
        "zh-CN": ("等了一会儿,问题解决了",),
        "zh-TW": ("等了一下,問題有解決",),
        "en": ("Had to wait a while, but it got sorted.",),
    },
    ("support", "neg"): {
        "zh-CN": ("排队半小时也没人接,问题还是没解决", "客服一直踢皮球,再也不买了"),
        "zh-TW": ("排隊半小時都沒人接,問題還是沒解決",),
        "en": ("Waited half an hour and the problem is still not solved.",),
    },
}
_COMMENTS: dict[tuple[str, str], _Pool] = {
    key: {
        lang: tuple(c.replace(",", "\uff0c") for c in texts) if lang != "en" else texts
        for lang, texts in pool.items()
    }
    for key, pool in _COMMENTS_SRC.items()
}
_TOPIC = {
    "checkout.payment": "payment",
    "app.login": "login",
    "delivery.tracking": "delivery",
    "call_center.support": "support",
}
_LANGS = ("zh-CN", "zh-TW", "en")
_LANG_CUM = (0.60, 0.75, 1.0)
_COMMENT_SHARE = 0.30

_CAMPAIGNS = ("double11-2026", "winter-lipstick", "member-day", "new-arrivals")
_DEVICES = ("ios", "android", "harmonyos")
_APP_VERSIONS = ("5.11.2", "5.12.0", "5.12.1")
_PAY_METHODS = ("wechat_pay", "alipay", "unionpay")
_STORES = ("sh-jingan-01", "sh-xuhui-02", "bj-chaoyang-01", "gz-tianhe-03")
_EXTRA_FIELDS = (
    ("sdk_version", "cx-sdk/2.4.1"),
    ("ingest_node", "gw-cn-east-3"),
    ("schema_hint", "v2"),
)


@lru_cache(maxsize=4096)
def _minute_prefix(minute: int) -> str:
    dt = _EPOCH_SHANGHAI + timedelta(minutes=minute)
    return dt.strftime("%Y-%m-%dT%H:%M:")


def _rfc3339(ms: int) -> str:
    """`ms` as an RFC 3339 string in Asia/Shanghai (+08:00), milliseconds when not zero."""
    minute, rest = divmod(ms, 60_000)
    second, frac = divmod(rest, 1000)
    prefix = _minute_prefix(minute)
    return f"{prefix}{second:02d}.{frac:03d}+08:00" if frac else f"{prefix}{second:02d}+08:00"


def _local_ms_of_day(ms: int) -> int:
    return (ms + _SHANGHAI_OFFSET_MS) % DAY_MS


def _in_quiet_hours(ms: int) -> bool:
    local = _local_ms_of_day(ms)
    return local >= _QUIET_START_MS or local < _QUIET_END_MS


def _held_out_of_quiet_hours(ms: int, jitter_ms: int) -> int:
    """When a marketing scheduler sends what it would send at `ms`: in quiet hours, held
    until the next morning (plus `jitter_ms`)."""
    if not _in_quiet_hours(ms):
        return ms
    return ms + (_QUIET_END_MS - _local_ms_of_day(ms)) % DAY_MS + jitter_ms


def _contacts(customer_id: str) -> dict[str, str]:
    """Deterministic, distinct contact values of a customer, by contact type."""
    if customer_id.startswith("c-flood-"):
        k = int(customer_id.rsplit("-", 1)[1])
        return {
            "phone": f"+86170{k:08d}",
            "email": f"flood{k:05d}@example.com",
            "app_user": f"uf{k:07d}",
            "wechat_openid": f"oFLD{k:08d}x9Qe",
        }
    i = int(customer_id[2:])
    return {
        "phone": f"+86138{i:08d}",
        "email": f"member{i:06d}@example.com",
        "app_user": f"u{i:08d}",
        "wechat_openid": f"oWx7{(i * 2_654_435_761) % 4_294_967_296:010d}{i:06d}",
    }


class _Simulation:
    """State of one run. Records are pushed into a heap and released in event-time order."""

    def __init__(self, config: SimulationConfig) -> None:
        self.cfg = config
        seed = config.seed
        self.rng = Random(seed)
        self.dup_rng = Random(f"{seed}:duplicates")
        self.bad_rng = Random(f"{seed}:invalid")
        self.flood_rng = Random(f"{seed}:flood")
        self.break_rng = Random(f"{seed}:break")
        self.end = config.start_ms + config.duration_ms
        self.heap: list[tuple[int, int, SimulatedRecord]] = []
        self.seq = 0
        self.counter = 0
        self.orders = 0
        self.frontier = config.start_ms  # nothing earlier than this is pushed any more
        self.linked: set[str] = set()
        self.marketing_times: dict[str, list[int]] = {}
        self.contacts: dict[str, dict[str, str]] = {}
        degrade_from = config.degrade_from_ms
        self.degrade_tp = config.degrade_touchpoint
        self.degrade_from = config.start_ms if degrade_from is None else degrade_from
        self.degrade_until = config.degrade_until_ms
        self.inconsistent = config.inconsistent_channel
        self.customer_ids = [f"c-{i:06d}" for i in range(1, config.customers + 1)]

    # -- plumbing -------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.cfg.seed}-{self.counter}"

    def _order_id(self) -> str:
        self.orders += 1
        return f"o-{self.cfg.seed}-{self.orders}"

    def _push(self, t: int, role: Role, key: bytes, value: bytes) -> None:
        if t >= self.end:
            return
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, SimulatedRecord(role, key, value, t)))

    def _timestamp(self, ms: int) -> str | int:
        return _rfc3339(ms) if self.rng.random() < 0.6 else ms

    def _lognormal(self, median: float, sigma: float) -> int:
        return int(median * math.exp(sigma * self.rng.gauss()))

    def _contact_of(self, customer_id: str, contact_type: str) -> dict[str, str]:
        values = self.contacts.get(customer_id)
        if values is None:
            values = self.contacts[customer_id] = _contacts(customer_id)
        return {"type": contact_type, "value": values[contact_type]}

    def _link(self, customer_id: str, contact: dict[str, str], at: int) -> None:
        """Publish the identity link of `contact` once, no later than any use of it."""
        key = f"{contact['type']}:{contact['value']}"
        if key in self.linked:
            return
        self.linked.add(key)
        value = {"contact": contact, "customer_id": customer_id, "linked_at": self._timestamp(at)}
        self._push(at, "identity_links", key.encode(), orjson.dumps(value))

    def _degraded(self, touchpoint: str, t: int) -> bool:
        return (
            touchpoint == self.degrade_tp
            and t >= self.degrade_from
            and (self.degrade_until is None or t < self.degrade_until)
        )

    def _inconsistent(self, touchpoint: str, channel: str, t: int) -> bool:
        """Whether a visit to `touchpoint` on `channel` at `t` leaves a bad experience."""
        return (
            self.inconsistent is not None
            and self.inconsistent == (TOUCHPOINTS[touchpoint].stage, channel)
            and self._trouble(t)
        )

    def _trouble(self, t: int) -> bool:
        return t >= self.degrade_from and (self.degrade_until is None or t < self.degrade_until)

    def _fatigued(self, customer_id: str, t: int) -> bool:
        """Whether a customer answering at `t` has had too many marketing messages."""
        if not (self.cfg.fatigue and self._trouble(t)):
            return False
        times = self.marketing_times.get(customer_id, ())
        return sum(1 for sent in times if t - DAY_MS < sent <= t) >= FATIGUED_AFTER

    def _broken(self, t: int) -> bool:
        """Whether a customer ready to go on from the cart at `t` is lost to the break."""
        start, until = self.cfg.break_from_ms, self.cfg.break_until_ms
        if start is None or t < start or (until is not None and t >= until):
            return False
        return self.break_rng.random() < _BROKEN_SHARE

    def _publish(self, t: int, role: Role, key: bytes, value: dict[str, Any]) -> None:
        """Push a valid event/answer, and maybe its duplicate and a malformed neighbour."""
        if t >= self.end:
            return
        data = orjson.dumps(value)
        self._push(t, role, key, data)
        ratio = self.cfg.duplicate_ratio
        if ratio and self.dup_rng.random() < ratio:
            self._push(t + self.dup_rng.randint(200, 20_000), role, key, data)
        ratio = self.cfg.invalid_ratio
        if ratio and self.bad_rng.random() < ratio:
            self._invalid(t + self.bad_rng.randint(0, 5_000), key)

    def _invalid(self, t: int, key: bytes) -> None:
        kind = self.bad_rng.randrange(6)
        bad_id = self._next_id("x")
        customer = key.decode()
        base: dict[str, Any] = {
            "event_id": bad_id,
            "occurred_at": t,
            "customer_id": customer,
            "touchpoint": "app.login",
            "channel": "app",
        }
        role: Role = "touchpoint_events"
        if kind == 0:  # not JSON: truncated
            value = orjson.dumps(base)[:-17]
        elif kind == 1:  # a JSON array, not an object
            value = orjson.dumps([base])
        elif kind == 2:  # missing event_id
            del base["event_id"]
            value = orjson.dumps(base)
        elif kind == 3:  # NPS out of range
            role = "survey_answers"
            answer = {
                "answer_id": bad_id,
                "answered_at": t,
                "customer_id": customer,
                "touchpoint": "checkout.payment",
                "metric": "nps",
                "score": 11,
            }
            value = orjson.dumps(answer)
        elif kind == 4:  # unparseable timestamp
            base["occurred_at"] = "yesterday"
            value = orjson.dumps(base)
        else:  # invalid UTF-8
            value = orjson.dumps(base)[:-1] + b', "note": "\xff\xfe\xe4\xbd"}'
        self._push(t, role, key, value)

    # -- records --------------------------------------------------------------------------

    def _event(
        self,
        t: int,
        customer_id: str,
        touchpoint: str,
        *,
        outcome: str | None = None,
        duration: int | None = None,
        channel: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        if t >= self.end:
            return
        spec = TOUCHPOINTS[touchpoint]
        rng = self.rng
        channel = channel or spec.channel
        outbound = spec.direction == "outbound"
        value: dict[str, Any] = {"event_id": self._next_id("e"), "occurred_at": self._timestamp(t)}
        key = customer_id
        if outbound and rng.random() < self._contact_only_share(customer_id):
            contact = self._contact_of(customer_id, CONTACT_TYPE_BY_CHANNEL[channel])
            self._link(customer_id, contact, self.frontier)
            value["contact"] = contact
            key = f"{contact['type']}:{contact['value']}"
        else:
            value["customer_id"] = customer_id
        value["touchpoint"] = touchpoint
        value["channel"] = channel
        if outbound or rng.random() < 0.8:
            value["direction"] = spec.direction
        if spec.category == "transactional" or (spec.category and rng.random() < 0.85):
            value["category"] = spec.category
        if rng.random() < 0.9:
            value["stage"] = spec.stage
        if outcome is not None:
            value["outcome"] = outcome
        if duration is not None:
            value["duration_ms"] = duration
        if attributes:
            value["attributes"] = attributes
        if rng.random() < 0.05:
            name, extra = _EXTRA_FIELDS[rng.randrange(len(_EXTRA_FIELDS))]
            value[name] = extra
        self._publish(t, "touchpoint_events", key.encode(), value)

    def _contact_only_share(self, customer_id: str) -> float:
        return 0.3 if customer_id.startswith("c-flood-") else _CONTACT_ONLY_SHARE

    def _survey(
        self,
        t: int,
        customer_id: str,
        touchpoint: str,
        metric: str,
        quality: int,
        *,
        channel: str | None = None,
    ) -> None:
        """One answer about a visit on `channel` (the touchpoint's own by default);
        `quality` 0 good, 1 mediocre, 2 bad experience."""
        if t >= self.end:
            return
        rng = self.rng
        channel = channel or TOUCHPOINTS[touchpoint].channel
        if self._inconsistent(touchpoint, channel, t):
            quality = 2
        elif self._fatigued(customer_id, t):
            quality = min(2, quality + 1)  # tired of the brand: one notch worse
        low, dists = _CUM_SCALES[metric]
        cum = dists[quality]
        score = low + rng.choices(range(len(cum)), cum_weights=cum)[0]
        value: dict[str, Any] = {
            "answer_id": self._next_id("a"),
            "answered_at": self._timestamp(t),
            "customer_id": customer_id,
            "touchpoint": touchpoint,
        }
        if rng.random() < 0.8:
            value["channel"] = channel
        value["metric"] = metric
        value["score"] = score
        if rng.random() < _COMMENT_SHARE:
            r = rng.random()
            lang = _LANGS[0] if r < _LANG_CUM[0] else (_LANGS[1] if r < _LANG_CUM[1] else _LANGS[2])
            pool = _COMMENTS[(_TOPIC[touchpoint], _sentiment(metric, score))][lang]
            value["comment"] = pool[rng.randrange(len(pool))]
            value["locale"] = lang
        self._publish(t, "survey_answers", customer_id.encode(), value)

    def _quality(self, touchpoint: str, t: int, outcome: str, duration: int | None) -> int:
        if outcome != "success":
            return 2
        if self._degraded(touchpoint, t) and self.rng.random() < 0.85:
            return 2
        slow = _SLOW_MS if touchpoint != "call_center.support" else 180_000
        if duration is not None and duration > slow:
            return 1
        return 0

    def _duration(self, touchpoint: str, t: int) -> int:
        spec = TOUCHPOINTS[touchpoint]
        median = spec.median_ms or 1_000.0
        duration = self._lognormal(median, spec.sigma)
        return duration * 3 if self._degraded(touchpoint, t) else duration

    def _failed(self, touchpoint: str, t: int) -> bool:
        rate = TOUCHPOINTS[touchpoint].failure
        if self._degraded(touchpoint, t):
            rate = max(rate, 0.25)
        return self.rng.random() < rate

    def _answer_after(self, t: int, duration: int | None) -> int:
        return t + (duration or 0) + self._lognormal(20_000, 0.8)

    def _marketing(self, t: int, customer_id: str, channel: str) -> None:
        """A journey-triggered marketing message, within quiet hours and the frequency cap."""
        if _in_quiet_hours(t):
            t = _held_out_of_quiet_hours(t, self.rng.randint(0, 90 * 60_000))
        if t >= self.end:
            return
        times = self.marketing_times.setdefault(customer_id, [])
        if self._before_campaign(customer_id, t):
            return  # the campaign is all they get from a day before it to its end
        if sum(1 for other in times if abs(other - t) <= DAY_MS) >= _MARKETING_PER_DAY:
            return
        times.append(t)
        self._message(t, customer_id, channel)

    def _in_campaign(self, customer_id: str) -> bool:
        return int(customer_id.rsplit("-", 1)[1]) % _CAMPAIGN_SHARE == 0

    def _before_campaign(self, customer_id: str, t: int) -> bool:
        """From a day before --fatigue's span to its end, for the customers of its campaign."""
        return (
            self.cfg.fatigue
            and self.degrade_from - DAY_MS <= t
            and (self.degrade_until is None or t < self.degrade_until)
            and self._in_campaign(customer_id)
        )

    def _campaign(self) -> None:
        """--fatigue: FATIGUED_AFTER marketing messages to each customer of the campaign,
        each on another channel: alone in their window, they break no messaging policy
        that allows FATIGUED_AFTER, even on one channel. Held out of quiet hours, like the rest.
        """
        rng = Random(f"{self.cfg.seed}:campaign")
        channels = sorted(MARKETING_TOUCHPOINT_BY_CHANNEL)
        for customer_id in self.customer_ids:
            if not self._in_campaign(customer_id):
                continue
            start = _held_out_of_quiet_hours(
                self.degrade_from + rng.randrange(2 * _CAMPAIGN_GAP_MS),
                rng.randrange(10 * _CAMPAIGN_GAP_MS),
            )
            first_channel = rng.randrange(len(channels))
            times = self.marketing_times.setdefault(customer_id, [])
            for number in range(FATIGUED_AFTER):
                at = start + number * _CAMPAIGN_GAP_MS
                if at < self.end:
                    times.append(at)
                    channel = channels[(first_channel + number) % len(channels)]
                    self._message(at, customer_id, channel)

    def _message(self, t: int, customer_id: str, channel: str) -> None:
        touchpoint = MARKETING_TOUCHPOINT_BY_CHANNEL[channel]
        outcome = "failure" if self._failed(touchpoint, t) else "success"
        attributes = None
        if self.rng.random() < 0.6:
            attributes = {"campaign": _CAMPAIGNS[self.rng.randrange(len(_CAMPAIGNS))]}
        self._event(t, customer_id, touchpoint, outcome=outcome, attributes=attributes)

    # -- journeys -------------------------------------------------------------------------

    def _journey(self, t0: int) -> None:
        rng = self.rng
        customer_id = self.customer_ids[rng.randrange(len(self.customer_ids))]
        entry = rng.random()
        t: int | None = t0
        if entry < 0.45 and t is not None:
            t = self._awareness(t, customer_id)
        if entry < 0.75 and t is not None:
            t = self._interest(t, customer_id)
        if t is None:
            return
        via_app = rng.random() < 0.65
        t = self._intent(t, customer_id, via_app)
        if t is not None:
            self._purchase(t, customer_id, "app" if via_app else "mini_program")

    def _awareness(self, t: int, customer_id: str) -> int | None:
        rng = self.rng
        touchpoint = "douyin.ad" if rng.random() < 0.55 else "xiaohongshu.note"
        attributes = None
        if rng.random() < 0.5:
            attributes = {"campaign": _CAMPAIGNS[rng.randrange(len(_CAMPAIGNS))]}
        self._event(t, customer_id, touchpoint, outcome="success", attributes=attributes)
        if rng.random() >= 0.45:
            return None
        return t + self._lognormal(90_000, 1.0)

    def _interest(self, t: int, customer_id: str) -> int | None:
        rng = self.rng
        touchpoint = "web.product_page" if rng.random() < 0.4 else "mini_program.product"
        duration = self._duration(touchpoint, t)
        if self._failed(touchpoint, t):
            outcome = "failure"
        elif duration > _SLOW_MS and rng.random() < 0.5:
            outcome = "abandoned"
        else:
            outcome = "success"
        attributes = None
        if rng.random() < 0.3:
            attributes = {"sku": f"sku-{rng.randint(1000, 1099)}"}
        self._event(
            t, customer_id, touchpoint, outcome=outcome, duration=duration, attributes=attributes
        )
        if outcome != "success":
            return None
        if rng.random() < 0.10:
            self._store(t + self._lognormal(2 * HOUR_MS, 0.6), customer_id)
            return None
        if rng.random() >= 0.55:
            return None
        return t + duration + self._lognormal(180_000, 0.9)

    def _intent(self, t: int, customer_id: str, via_app: bool) -> int | None:
        rng = self.rng
        if not via_app:  # mini-program checkout: intent shows only as going on to pay
            return t + self._lognormal(40_000, 0.6) if rng.random() < 0.6 else None
        device = {
            "device": _DEVICES[rng.randrange(3)],
            "app_version": _APP_VERSIONS[rng.randrange(3)],
        }
        for attempt in range(2):
            duration = self._duration("app.login", t)
            outcome = "failure" if self._failed("app.login", t) else "success"
            self._event(
                t,
                customer_id,
                "app.login",
                outcome=outcome,
                duration=duration,
                attributes=device if rng.random() < 0.4 else None,
            )
            if rng.random() < 0.10:
                quality = self._quality("app.login", t, outcome, duration)
                self._survey(
                    self._answer_after(t, duration), customer_id, "app.login", "ces", quality
                )
            t += duration
            if outcome == "success":
                break
            if attempt == 1 or rng.random() >= 0.7:
                return None
            t += rng.randint(10_000, 40_000)
        t += self._lognormal(60_000, 0.8)
        goes_on = rng.random() < 0.6
        duration = self._duration("app.cart", t)
        if self._failed("app.cart", t):
            outcome = "failure"
            goes_on = False
        elif not goes_on and rng.random() < 0.6:
            outcome = "abandoned"
        else:
            outcome = "success"
        items = {"items": 1 + int(rng.random() * rng.random() * 4)}
        self._event(
            t, customer_id, "app.cart", outcome=outcome, duration=duration, attributes=items
        )
        if goes_on and self._broken(t):
            return None
        if not goes_on:
            if outcome == "abandoned" and rng.random() < 0.5:
                channel = "app_push" if rng.random() < 0.6 else "sms"
                self._marketing(t + self._lognormal(45 * 60_000, 0.5), customer_id, channel)
            return None
        return t + duration + self._lognormal(40_000, 0.6)

    def _purchase(self, t: int, customer_id: str, channel: str) -> None:
        rng = self.rng
        order_id = self._order_id()
        amount = round(rng.lognormvariate(math.log(180.0), 0.7), 2)
        method = _PAY_METHODS[rng.randrange(3)]
        for attempt in range(2):
            duration = self._duration("checkout.payment", t)
            abandon = 0.08 if self._degraded("checkout.payment", t) else 0.03
            if self._failed("checkout.payment", t):
                outcome = "failure"
            elif rng.random() < abandon:
                outcome = "abandoned"
            else:
                outcome = "success"
            attributes = None
            if rng.random() < 0.7:
                attributes = {"order_id": order_id, "amount_cny": amount, "method": method}
            self._event(
                t,
                customer_id,
                "checkout.payment",
                outcome=outcome,
                duration=duration,
                channel=channel,
                attributes=attributes,
            )
            if rng.random() < 0.25:
                quality = self._quality("checkout.payment", t, outcome, duration)
                at = self._answer_after(t, duration)
                self._survey(at, customer_id, "checkout.payment", "nps", quality, channel=channel)
            t += duration
            if outcome == "success":
                break
            if outcome == "abandoned" or attempt == 1 or rng.random() >= 0.5:
                return
            t += rng.randint(20_000, 120_000)
        self._confirmation(t + rng.randint(2_000, 20_000), customer_id, order_id)
        self._after_purchase(t, customer_id, delivered=True)

    def _confirmation(self, t: int, customer_id: str, order_id: str) -> None:
        outcome = "failure" if self._failed("order.confirmation", t) else "success"
        self._event(
            t, customer_id, "order.confirmation", outcome=outcome, attributes={"order_id": order_id}
        )

    def _store(self, t: int, customer_id: str) -> None:
        if t >= self.end:
            return
        rng = self.rng
        duration = self._duration("store.visit", t)
        outcome = "abandoned" if rng.random() < 0.15 else "success"
        attributes = {"store_id": _STORES[rng.randrange(len(_STORES))]}
        self._event(
            t, customer_id, "store.visit", outcome=outcome, duration=duration, attributes=attributes
        )
        if outcome != "success":
            return
        t += duration
        if rng.random() < 0.5:
            order_id = self._order_id()
            self._confirmation(t + rng.randint(5_000, 60_000), customer_id, order_id)
        self._after_purchase(t, customer_id, delivered=False)

    def _after_purchase(self, t: int, customer_id: str, *, delivered: bool) -> None:
        rng = self.rng
        if delivered:
            seen = t + self._lognormal(5 * HOUR_MS, 0.8)
            views = 1 + (rng.random() < 0.4) + (rng.random() < 0.15)
            for _ in range(views):
                self._tracking(seen, customer_id)
                seen += self._lognormal(8 * HOUR_MS, 0.7)
        if rng.random() < 0.08:
            self._support(t + self._lognormal(10 * HOUR_MS, 0.8), customer_id)
        if rng.random() < 0.35:
            r = rng.random()
            channel = (
                "email"
                if r < 0.35
                else ("wechat" if r < 0.65 else "sms" if r < 0.85 else "app_push")
            )
            self._marketing(t + self._lognormal(4 * HOUR_MS, 0.6), customer_id, channel)

    def _tracking(self, t: int, customer_id: str) -> None:
        if t >= self.end:
            return
        duration = self._duration("delivery.tracking", t)
        outcome = "failure" if self._failed("delivery.tracking", t) else "success"
        self._event(t, customer_id, "delivery.tracking", outcome=outcome, duration=duration)
        if self.rng.random() < 0.2:
            quality = self._quality("delivery.tracking", t, outcome, duration)
            at = self._answer_after(t, duration)
            self._survey(at, customer_id, "delivery.tracking", "csat", quality)

    def _support(self, t: int, customer_id: str) -> None:
        if t >= self.end:
            return
        rng = self.rng
        wait = self._duration("call_center.support", t)
        if self._failed("call_center.support", t):
            outcome = "failure"
        elif rng.random() < (0.5 if wait > 300_000 else 0.04):
            outcome = "abandoned"
        else:
            outcome = "success"
        self._event(t, customer_id, "call_center.support", outcome=outcome, duration=wait)
        if outcome != "abandoned" and rng.random() < 0.4:
            quality = self._quality("call_center.support", t, outcome, wait)
            at = t + wait + self._lognormal(6 * 60_000, 0.6)  # after the call itself
            self._survey(at, customer_id, "call_center.support", "csat", quality)
            self._survey(
                at + rng.randint(3_000, 15_000), customer_id, "call_center.support", "ces", quality
            )

    # -- over-messaged customers ----------------------------------------------------------

    def _floods(self) -> None:
        """Customers `c-flood-N` who get a burst of 8 marketing messages in one hour."""
        rng = self.flood_rng
        start = self.cfg.start_ms
        for k in range(1, self.cfg.over_messaged_customers + 1):
            customer_id = f"c-flood-{k}"
            for contact_type in ("phone", "email", "app_user", "wechat_openid"):
                self._link(customer_id, self._contact_of(customer_id, contact_type), start)
            heavy = (k - 1) % len(_MARKETING_CHANNELS)
            others = [_MARKETING_CHANNELS[(heavy + j) % 4] for j in (1, 2, 3)]
            channels = [_MARKETING_CHANNELS[heavy]] * 4 + [others[0]] * 2 + others[1:]
            rng.shuffle(channels)
            burst_start = start + 10 * 60_000
            times = sorted(burst_start + rng.randrange(HOUR_MS) for _ in channels)
            for at, channel in zip(times, channels, strict=True):
                self._flood_message(at, customer_id, channel)
            if k == 1:
                local = _local_ms_of_day(start)
                late = start + (23 * HOUR_MS + 30 * 60_000 - local) % DAY_MS  # next 23:30 local
                self._flood_message(late, customer_id, "sms")
                self._flood_message(late + 90_000, customer_id, "app_push")

    def _flood_message(self, t: int, customer_id: str, channel: str) -> None:
        # the main rng must not be consumed here: flood or not, journeys stay the same
        saved, self.rng = self.rng, self.flood_rng
        try:
            self._message(t, customer_id, channel)
        finally:
            self.rng = saved

    # -- run ------------------------------------------------------------------------------

    def run(self) -> Iterator[SimulatedRecord]:
        heap = self.heap
        self._floods()
        if self.cfg.fatigue:
            self._campaign()
        if self.cfg.journeys_per_hour > 0:
            rate = self.cfg.journeys_per_hour / HOUR_MS
            t = float(self.cfg.start_ms)
            while True:
                t += self.rng.expovariate(rate)
                t0 = int(t)
                if t0 >= self.end:
                    break
                while heap and heap[0][0] < t0:
                    yield heapq.heappop(heap)[2]
                self.frontier = t0
                self._journey(t0)
        while heap:
            yield heapq.heappop(heap)[2]
