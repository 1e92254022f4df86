"""Dead letters read back: where each came from, why, its bytes shortened and escaped."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.commands.dead_letters import SHOWN_BYTES, DeadLetter, escaped
from tests.harness import REPO, Deployment

AT_MS = 1_795_305_600_000  # 2026-11-22T00:00:00Z


def headers(reason: str, error: str, offset: int, **extra: str) -> list[tuple[str, bytes]]:
    """As the worker writes them (agents/stages/ingest.py `_dead_letter`)."""
    named = {
        "cxmon-reason": reason,
        "cxmon-error": error,
        "cxmon-topic": "cx.touchpoint-events",
        "cxmon-partition": "3",
        "cxmon-offset": str(offset),
        **extra,
    }
    return [(name, value.encode()) for name, value in named.items()]


def test_a_line_says_when_where_why_and_shows_the_bytes_escaped() -> None:
    letter = DeadLetter.of(
        AT_MS,
        b"c-1",
        b'{"event_id": "e-\xff", \n"x": 1}',
        headers("invalid_json", "not UTF-8 at byte 16", 1534),
    )
    assert letter.line() == (
        "2026-11-22T00:00:00.000+00:00  cx.touchpoint-events:3@1534  invalid_json  "
        "not UTF-8 at byte 16\n"
        '    {"event_id": "e-\\xff", \\n"x": 1}'
    )


def test_a_long_record_is_shortened_with_its_size_and_a_cut_one_with_the_size_sent() -> None:
    value = "付".encode() * 400
    long = DeadLetter.of(AT_MS, None, value, headers("missing_field", "event_id", 7))
    assert long.line().endswith(f" … ({len(value):,} bytes)")
    assert len(long.line().splitlines()[1]) < SHOWN_BYTES
    cut = DeadLetter.of(
        AT_MS,
        None,
        b"x" * 1000,
        headers("invalid_json", "too big", 8, **{"cxmon-original-size": "10485760"}),
    )
    assert cut.line().endswith(" … (10,485,760 bytes)")
    shown = orjson.loads(cut.json())
    assert (shown["size"], shown["cut"], len(shown["value"])) == (10_485_760, True, 1000)


def test_json_carries_every_field_and_unknown_headers_read_as_unknown() -> None:
    letter = DeadLetter.of(AT_MS, b"k\x00", b"\x01\x02", [])
    assert orjson.loads(letter.json()) == {
        "refused_at": "2026-11-22T00:00:00.000+00:00",
        "topic": "?",
        "partition": None,
        "offset": None,
        "reason": "?",
        "error": "",
        "key": "k\\x00",
        "value": "\\x01\\x02",
        "size": 2,
        "cut": False,
    }
    assert letter.line().startswith("2026-11-22T00:00:00.000+00:00  ?:?@?  ?  ")


def test_escaped_keeps_text_and_escapes_what_a_terminal_would_act_on() -> None:
    assert escaped("好评 ok".encode()) == "好评 ok"
    assert escaped(b"\x1b[31mred\r\n\t") == "\\x1b[31mred\\r\\n\\t"


@pytest.mark.broker
def test_the_command_reads_filters_and_prints_json(deployment: Deployment) -> None:
    topic = deployment.topics.dead_letters
    letters = [
        (b"not json", headers("invalid_json", "Expecting value", 10)),
        (b'{"event_id": "e"}', headers("missing_field", "occurred_at", 11)),
        (b'{"event_id": "f"}', headers("missing_field", "touchpoint", 12)),
    ]
    env = deployment.env("client", 0)

    def cxmon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams", "dead-letters", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )

    nothing = cxmon("--from-beginning")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert f"no dead letters on {topic}" in nothing.stderr

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=deployment.settings().bootstrap_servers)
        await producer.start()
        try:
            for value, named in letters:
                await producer.send_and_wait(topic, value, key=b"c-1", headers=named)
        finally:
            await producer.stop()

    asyncio.run(produce())

    every = cxmon("--from-beginning")
    assert every.returncode == 0, every.stderr
    firsts = [line for line in every.stdout.splitlines() if not line.startswith("    ")]
    assert [line.split("  ")[1:3] for line in firsts] == [
        ["cx.touchpoint-events:3@10", "invalid_json"],
        ["cx.touchpoint-events:3@11", "missing_field"],
        ["cx.touchpoint-events:3@12", "missing_field"],
    ]
    missing = cxmon("--from-beginning", "--reason", "missing_field", "--json")
    assert [orjson.loads(line)["error"] for line in missing.stdout.splitlines()] == [
        "occurred_at",
        "touchpoint",
    ]
    new_only = cxmon()
    assert new_only.stdout == ""
    assert "no new dead letters" in new_only.stderr
    bogus = cxmon("--reason", "bogus")
    assert bogus.returncode == 2
    assert "invalid choice: 'bogus'" in bogus.stderr
