"""Offline comment-sentiment scorers in [-1, 1]: VADER for English, pysenti for Chinese."""

from __future__ import annotations

import logging
import math
import re
from typing import Protocol

from pysenti import ModelClassifier
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
from zhconv import convert as _zh_convert  # type: ignore[import-untyped, unused-ignore]

__all__ = ["MAX_CHARS", "SCORER_NAMES", "SentimentScorer", "build_scorer"]

# Both models slow down with length, VADER worse than linearly (an uncapped 1 MB comment
# ran for over 13 minutes); one pasted log must not stall the stream, and the opening
# of a comment carries its tone well enough.
MAX_CHARS = 2_000

SCORER_NAMES = ("auto", "en", "zh", "none")

_NON_SPACE = re.compile(r"\S")
# Unified ideographs, extension A, compatibility ideographs and the supplementary
# planes' extensions: Japanese kana-only or Korean hangul text stays on the English path.
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")

# Any trivially short text that exercises every lazy path: jieba builds its prefix
# dictionary and zhconv its conversion tables on first use (about 0.7 s together).
_WARM_UP_TEXT = "服務很好"


class SentimentScorer(Protocol):
    """Scores one comment: -1.0 is very unhappy, 0.0 neutral or unknown, 1.0 very happy."""

    def score(self, text: str) -> float: ...


def _prepare(text: str) -> str:
    """The bounded, trimmed part of `text` that gets scored; empty when there is nothing."""
    # Searching for the first non-space keeps the copy bounded even for a huge comment,
    # where text.strip() would copy all of it first.
    first = _NON_SPACE.search(text)
    if first is None:
        return ""
    start = first.start()
    return text[start : start + MAX_CHARS].rstrip()


def _clamp(value: float) -> float:
    # min/max let a NaN through as +1.0, which would read as delight.
    if not math.isfinite(value):
        return 0.0
    return max(-1.0, min(1.0, value))


class _GuardedScorer:
    """Applies the shared guards (bounded length, empty text, clamping) around a model."""

    def score(self, text: str) -> float:
        prepared = _prepare(text)
        if not prepared:
            return 0.0
        return _clamp(self._raw_score(prepared))

    def _raw_score(self, text: str) -> float:
        raise NotImplementedError


class _NullScorer:
    def score(self, text: str) -> float:
        return 0.0


class _EnglishScorer(_GuardedScorer):
    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def _raw_score(self, text: str) -> float:
        return float(self._analyzer.polarity_scores(text)["compound"])


class _ChineseScorer(_GuardedScorer):
    def __init__(self) -> None:
        # The naive-Bayes model, not pysenti's rule mode: the rules drop negation,
        # so "不好用" would score as praise.
        self._model = ModelClassifier()
        self._vocabulary: frozenset[str] = frozenset().union(
            *(counts.samples() for counts in self._model.classifier.d.values())
        )
        _quiet_jieba()
        self._raw_score(_WARM_UP_TEXT)

    def _raw_score(self, text: str) -> float:
        # The model was trained on simplified text, where traditional forms are rare or
        # missing: "推薦購買" would be read as unknown words instead of a recommendation.
        simplified: str = _zh_convert(text, "zh-cn")
        # Unseen tokens carry no evidence, yet add-one smoothing over unequal class sizes
        # makes each one a small vote for "negative"; whitespace is in the vocabulary only
        # as a corpus artefact that leans negative. Both would sink any comment with Latin
        # words or spacing, so only seen, non-blank tokens are weighed.
        tokens = [
            token
            for token in self._model.handle(simplified)
            if token in self._vocabulary and not token.isspace()
        ]
        if not tokens:
            # Without evidence the class prior alone would read as mild praise.
            return 0.0
        label, probability = self._model.classifier.classify(tokens)
        positive = float(probability) if label == "pos" else 1.0 - float(probability)
        return 2.0 * positive - 1.0


class _ScriptRoutingScorer(_GuardedScorer):
    def __init__(self, english: _EnglishScorer, chinese: _ChineseScorer) -> None:
        self._english = english
        self._chinese = chinese

    def _raw_score(self, text: str) -> float:
        # Mixed comments go to Chinese: VADER has no CJK lexicon and would call them
        # neutral, while the Chinese model still weighs the Latin words it knows.
        model = self._chinese if _CJK.search(text) else self._english
        return model._raw_score(text)


def _quiet_jieba() -> None:
    # jieba attaches its own stderr handler and logs "Building prefix dict..." at load;
    # the worker's log should only carry our own lines. Set after pysenti imported jieba,
    # because jieba resets its level to DEBUG on import.
    logging.getLogger("jieba").setLevel(logging.ERROR)


def build_scorer(name: str = "auto") -> SentimentScorer:
    """Builds a scorer with its models already loaded, so the first comment is not slow.

    "auto" routes text with CJK ideographs to the Chinese model and the rest to English;
    "en" and "zh" are the single-language models; "none" always scores 0.0.
    """
    if name == "none":
        return _NullScorer()
    if name == "en":
        return _EnglishScorer()
    if name == "zh":
        return _ChineseScorer()
    if name == "auto":
        return _ScriptRoutingScorer(_EnglishScorer(), _ChineseScorer())
    valid = ", ".join(repr(n) for n in SCORER_NAMES)
    raise ValueError(f"unknown sentiment scorer {name!r}; valid names are {valid}")
