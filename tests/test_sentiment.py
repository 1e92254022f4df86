"""Comment sentiment: sign per language, script routing, and the guards around the models."""

# Real Chinese comments are punctuated with full-width marks, so the samples keep them.
# ruff: noqa: RUF001

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streams.core.sentiment import MAX_CHARS, SCORER_NAMES, SentimentScorer, build_scorer

# VADER's own convention: compound scores within ±0.05 read as neutral.
NEUTRAL_BAND = 0.05

ENGLISH_POSITIVE = [
    "I love this app, it works perfectly!",
    "Great service, the staff were friendly and helpful.",
    "Excellent experience, highly recommend.",
]
ENGLISH_NEGATIVE = [
    "This is the worst support I have ever had.",
    "Terrible app, it keeps crashing and I hate it.",
    "I'm very disappointed, the delivery was late and the box was broken.",
    "Not happy at all.",
]
SIMPLIFIED_POSITIVE = [
    "这个产品很好用",
    "非常满意，服务很好",
    "质量很好，推荐购买",
    "物流很快，包装很好",
]
SIMPLIFIED_NEGATIVE = [
    "不好用",
    "一点也不满意",
    "这个产品不好用",
    "太差了，再也不买了",
    "质量太差，非常失望",
]
# Written out by hand, not converted with the library under test.
TRADITIONAL_POSITIVE = [
    "這個產品很好用",
    "非常滿意，服務很好",
    "質量很好，推薦購買",
    "物流很快，包裝很好",
]
TRADITIONAL_NEGATIVE = [
    "不好用",
    "一點也不滿意",
    "這個產品不好用",
    "太差了，再也不買了",
    "質量太差，非常失望",
]


@pytest.fixture(scope="module")
def scorers() -> dict[str, SentimentScorer]:
    return {name: build_scorer(name) for name in SCORER_NAMES}


@pytest.fixture(scope="module")
def auto(scorers: dict[str, SentimentScorer]) -> SentimentScorer:
    return scorers["auto"]


@pytest.fixture(scope="module")
def english(scorers: dict[str, SentimentScorer]) -> SentimentScorer:
    return scorers["en"]


@pytest.fixture(scope="module")
def chinese(scorers: dict[str, SentimentScorer]) -> SentimentScorer:
    return scorers["zh"]


@pytest.mark.parametrize("text", ENGLISH_POSITIVE + SIMPLIFIED_POSITIVE + TRADITIONAL_POSITIVE)
def test_positive_comment_scores_positive(auto: SentimentScorer, text: str) -> None:
    assert auto.score(text) > NEUTRAL_BAND


@pytest.mark.parametrize("text", ENGLISH_NEGATIVE + SIMPLIFIED_NEGATIVE + TRADITIONAL_NEGATIVE)
def test_negative_comment_scores_negative(auto: SentimentScorer, text: str) -> None:
    assert auto.score(text) < -NEUTRAL_BAND


@pytest.mark.parametrize(
    ("simplified", "traditional"),
    list(
        zip(
            SIMPLIFIED_POSITIVE + SIMPLIFIED_NEGATIVE,
            TRADITIONAL_POSITIVE + TRADITIONAL_NEGATIVE,
            strict=True,
        )
    ),
)
def test_traditional_scores_like_simplified(
    chinese: SentimentScorer, simplified: str, traditional: str
) -> None:
    assert chinese.score(traditional) == pytest.approx(chinese.score(simplified))


@pytest.mark.parametrize(
    "text",
    [
        *SIMPLIFIED_POSITIVE,
        *TRADITIONAL_NEGATIVE,
        "The app is great but 物流太慢了",
        "退款 refund never arrived",
    ],
)
def test_auto_sends_text_with_ideographs_to_chinese(
    auto: SentimentScorer, chinese: SentimentScorer, text: str
) -> None:
    assert auto.score(text) == chinese.score(text)


def test_mixed_comment_is_not_left_neutral_by_english(
    auto: SentimentScorer, english: SentimentScorer
) -> None:
    # VADER sees only "great" here; the complaint is in the Chinese part.
    text = "The app is great but 物流太慢了，很失望"
    assert english.score(text) > 0
    assert auto.score(text) < -NEUTRAL_BAND


@pytest.mark.parametrize("text", ENGLISH_POSITIVE + ENGLISH_NEGATIVE)
def test_auto_sends_latin_text_to_english(
    auto: SentimentScorer, english: SentimentScorer, text: str
) -> None:
    assert auto.score(text) == english.score(text)


def test_latin_words_and_spacing_do_not_sink_chinese_praise(chinese: SentimentScorer) -> None:
    # Unseen tokens and blanks would each count as a small negative vote in the raw model.
    padded = "这个产品很好用" + " foo bar" * 50
    assert chinese.score(padded) == pytest.approx(chinese.score("这个产品很好用"))


def test_chinese_without_known_words_is_neutral(chinese: SentimentScorer) -> None:
    assert chinese.score("。。。") == 0.0
    assert chinese.score("qwzx plok") == 0.0


@pytest.mark.parametrize("name", SCORER_NAMES)
@pytest.mark.parametrize("text", ["", "   ", "\n\t \u3000"])
def test_empty_text_scores_zero(scorers: dict[str, SentimentScorer], name: str, text: str) -> None:
    assert scorers[name].score(text) == 0.0


@pytest.mark.parametrize(
    ("head", "tail"),
    [("Great, I love it! ", "Awful, I hate it. "), ("非常满意，服务很好。", "太差了，很失望。")],
)
def test_only_the_opening_of_a_huge_comment_is_scored(
    auto: SentimentScorer, head: str, tail: str
) -> None:
    text = head * (MAX_CHARS // len(head) + 1) + tail * (1_000_000 // len(tail))
    assert len(text) > 1_000_000
    started = time.perf_counter()
    value = auto.score(text)
    elapsed = time.perf_counter() - started
    assert 0 < value <= 1.0
    assert elapsed < 1.0


@pytest.mark.parametrize("unit", ["terrible awful ", "太差了！", " ", "好"])
def test_megabyte_comment_is_quick_and_in_range(auto: SentimentScorer, unit: str) -> None:
    text = unit * (1_000_000 // len(unit))
    started = time.perf_counter()
    value = auto.score(text)
    elapsed = time.perf_counter() - started
    assert -1.0 <= value <= 1.0
    assert elapsed < 1.0


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'vader'.*'auto', 'en', 'zh', 'none'"):
        build_scorer("vader")


def test_none_always_scores_zero(scorers: dict[str, SentimentScorer]) -> None:
    scorer = scorers["none"]
    for text in [*ENGLISH_POSITIVE, *ENGLISH_NEGATIVE, *SIMPLIFIED_NEGATIVE, ""]:
        assert scorer.score(text) == 0.0


def test_build_loads_eagerly_and_quietly() -> None:
    # A fresh interpreter: in this one the fixtures have already warmed jieba up.
    script = textwrap.dedent(
        """
        import logging, time
        logging.basicConfig(level=logging.DEBUG)
        from streams.core.sentiment import build_scorer
        scorer = build_scorer("auto")
        started = time.perf_counter()
        scorer.score("这个产品很好用")
        print(time.perf_counter() - started)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stderr == ""
    assert float(done.stdout) < 0.2
