"""The question a sending service asks the pressure endpoint, read from its query string."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from models.decode import InvalidRecord, parse_timestamp_text
from models.records import CHANNELS, Category

PARAMETERS = ("channel", "category", "at")
AT_FORMS = ("RFC 3339 with an offset, its + written %2B", "epoch milliseconds")


class QueryError(ValueError):
    """A query the endpoint refuses: which parameter, why, and what it accepts."""

    def __init__(self, parameter: str, reason: str, allowed: Iterable[str]) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.allowed = list(allowed)

    def as_json(self) -> dict[str, Any]:
        return {"error": str(self), "parameter": self.parameter, "allowed": self.allowed}


@dataclass(frozen=True, slots=True)
class PressureQuestion:
    """Would one more message (on `channel`, of `category`, at `at_ms`) break the policy?"""

    channel: str | None
    category: Category | None
    at_ms: int


def read_question(params: Iterable[tuple[str, str]], now_ms: int) -> PressureQuestion:
    """The question from every (name, value) of a query string; `at` is `now_ms` if not given.

    A sending service that misspells a parameter or a channel would otherwise be told
    `allowed` about a question it did not mean to ask: anything not understood is refused.
    """
    given: dict[str, str] = {}
    for name, value in params:
        if name not in PARAMETERS:
            raise QueryError(name, "unknown parameter", PARAMETERS)
        if name in given:
            raise QueryError(name, "given twice", PARAMETERS)
        given[name] = value
    channel = given.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise QueryError("channel", f"{channel!r} is not one of {', '.join(CHANNELS)}", CHANNELS)
    category: Category | None = None
    if "category" in given:
        categories = [c.value for c in Category]
        try:
            category = Category(given["category"])
        except ValueError:
            raise QueryError(
                "category",
                f"{given['category']!r} is not one of {', '.join(categories)}",
                categories,
            ) from None
    return PressureQuestion(channel, category, read_at(given.get("at"), now_ms))


def read_at(text: str | None, now_ms: int) -> int:
    if text is None:
        return now_ms
    try:
        return parse_timestamp_text(text, "at")
    except InvalidRecord as exc:
        reason = exc.detail.removeprefix("at: ")
        if " " in text:
            # A URL reads an unencoded + as a space: 10:00:00+08:00 arrives as 10:00:00 08:00.
            reason += "; a + in a URL must be written %2B"
        raise QueryError("at", reason, AT_FORMS) from None
