"""The command line: routing of published lines, refusals at start, publishing to a topic."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.records import AlertStatus
from streams.commands.cli import add_simulation_options, simulation_config
from streams.commands.publish import Outgoing, read_lines
from streams.commands.simulate import generate
from streams.kafka.topics import TopologyError, ensure_topics, input_topics
from streams.settings import Settings, Topics
from tests.harness import CATALOG, Deployment, free_port, reference

REPO = Path(__file__).resolve().parent.parent


def cxmon(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m streams ARGS` with only the given environment."""
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={"PATH": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_publish_routes_each_line_by_its_fields_and_names_bad_lines() -> None:
    lines = b"\n".join(
        [
            b'{"event_id": "e1", "customer_id": "c1", "touchpoint": "app.login"}',
            b'{"answer_id": "a1", "contact": {"type": "phone", "value": "+86138"}}',
            b'{"contact": {"type": "email", "value": "x@example.com"}, "linked_at": 1}',
            b"",
            b"not json",
            b'{"hello": "world"}',
        ]
    )
    topics = Topics()
    items = list(read_lines(io.BytesIO(lines), topics, None))
    routed = [(i.topic, i.key) for i in items if isinstance(i, Outgoing)]
    assert routed == [
        (topics.touchpoint_events, b"c1"),
        (topics.survey_answers, b"phone:+86138"),
        (topics.identity_links, b"email:x@example.com"),
    ]
    errors = [i for i in items if isinstance(i, str)]
    assert len(errors) == 2
    assert errors[0].startswith("line 5: ")
    assert errors[1].startswith("line 6: ")


def test_publish_with_a_topic_sends_every_line_unchanged_keyed_when_it_can_be() -> None:
    lines = b"\n".join(
        [
            b"not json",
            b"{}",
            b'{"event_id": "e1", "customer_id": "c1"}',
            b'{"answer_id": "a1", "contact": {"type": "phone", "value": "+86138"}}',
        ]
    )
    items = list(read_lines(io.BytesIO(lines), Topics(), "raw"))
    assert items == [
        Outgoing("raw", None, b"not json"),
        Outgoing("raw", None, b"{}"),
        Outgoing("raw", b"c1", b'{"event_id": "e1", "customer_id": "c1"}'),
        Outgoing("raw", b"phone:+86138", lines.splitlines()[3]),
    ]


LINK = b'{"customer_id": "c1", "contact": {"type": "email", "value": "x@x.org"}, "linked_at": 1}'


def test_publish_to_the_links_topic_keys_by_contact_and_refuses_a_line_without_one() -> None:
    # The links topic is compacted: a keyless record would be refused by the broker.
    topics = Topics()
    lines = b"\n".join([LINK, b"not json", b'{"customer_id": "c2", "linked_at": 1}'])
    items = list(read_lines(io.BytesIO(lines), topics, topics.identity_links))
    assert items[0] == Outgoing(topics.identity_links, b"email:x@x.org", LINK)
    assert [i.split(":")[0] for i in items[1:] if isinstance(i, str)] == ["line 2", "line 3"]
    assert "keyed by contact" in str(items[1])


@pytest.mark.broker
def test_publish_to_the_compacted_links_topic_on_a_real_broker(deployment: Deployment) -> None:
    topics = deployment.topics
    env = deployment.env("client", 0)
    done = subprocess.run(
        [sys.executable, "-m", "streams", "publish", "-", "--topic", topics.identity_links],
        input=LINK + b"\n{}\n",
        env=env,
        capture_output=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 1, done.stderr.decode()
    assert b"published 1 messages; 1 lines refused" in done.stderr
    stored = deployment.read_to_end(topics.identity_links)
    assert [(key, value) for key, value, _ in stored] == [(b"email:x@x.org", LINK)]


def test_worker_refuses_a_bad_catalog_before_it_touches_the_broker(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "key_moments:\n  - touchpoint: checkout.payment\n    metric: nsp\n    below: 1\n"
    )
    done = cxmon("worker", CXMON_CATALOG=str(catalog), CXMON_BROKER_URL="kafka://127.0.0.1:1")
    assert done.returncode == 2
    assert f"{catalog}:3:" in done.stderr
    assert "'nsp' is not one of" in done.stderr


def test_a_bad_setting_is_named() -> None:
    done = cxmon("check-catalog", CXMON_PARTITIONS="eight")
    assert done.returncode == 2
    assert "CXMON_PARTITIONS='eight' is not a whole number" in done.stderr


def test_check_catalog_lists_the_journey_breaks() -> None:
    done = cxmon("check-catalog")
    assert done.returncode == 0, done.stderr
    assert "5 key moments, 1 journey breaks" in done.stdout
    assert (
        "  app.cart -> checkout.payment: broken when more than 0.5 of customers do not go on "
        "within 10m, 30m windows every 5m, min 100 samples, recovers at 0.45; severity critical"
    ) in done.stdout.splitlines()
    assert done.stdout.splitlines()[-1].startswith("messaging: at most 5 marketing messages")


def test_check_catalog_refuses_an_empty_file(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("# to do\n")
    done = cxmon("check-catalog", str(catalog))
    assert done.returncode == 2
    assert done.stderr == f"cxmon: {catalog}: the catalog is empty: declare touchpoints, " \
        "key_moments, breaks or messaging (see deploy/catalog.example.yaml)\n"  # fmt: skip
    assert done.stdout == ""


def test_check_catalog_warns_of_an_undeclared_touchpoint_naming_the_nearest(
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "touchpoints:\n  app.login: {stage: intent}\n"
        "key_moments:\n  - {touchpoint: app.logn, metric: duration_ms, above: 3000}\n"
    )
    done = cxmon("check-catalog", str(catalog))
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        f"cxmon: {catalog}:4: warning: key moment app.logn: touchpoint 'app.logn' is not "
        "declared in touchpoints (the nearest declared is 'app.login')\n"
    )
    assert "  app.logn/duration_ms: degraded when above 3000" in done.stdout


@pytest.mark.parametrize(
    ("flags", "demo", "broken_from_ms"),
    [([], False, None), (["--break-journey"], False, 3_600_000), ([], True, 3_600_000),
     (["--no-break-journey"], True, None)],
)  # fmt: skip
def test_break_journey_breaks_the_cart_to_checkout_hand_off_half_way(
    flags: list[str], demo: bool, broken_from_ms: int | None
) -> None:
    parser = argparse.ArgumentParser()
    add_simulation_options(parser, demo=demo)
    args = parser.parse_args(["--span", "2h", "--start", "2026-11-22T00:00:00Z", *flags])
    config = simulation_config(args)
    offset = None if config.break_from_ms is None else config.break_from_ms - config.start_ms
    assert offset == broken_from_ms
    assert config.break_until_ms is None


def test_the_demo_shows_every_kind_of_stream_alert() -> None:
    """What `make run` publishes (seed 7, three hours from 2026-11-22T00:00Z), through the
    offline reference: logins slow down, checkout answers after paying in the mini program
    turn bad, carts stop reaching checkout, a campaign tires half the customers and three
    customers are flooded, half-way."""
    parser = argparse.ArgumentParser()
    add_simulation_options(parser, demo=True)
    config = simulation_config(parser.parse_args(["--start", "2026-11-22T00:00:00Z"]))
    assert (config.degrade_touchpoint, config.inconsistent_channel) == (
        "app.login",
        ("purchase", "mini_program"),
    )
    alerts = reference(CATALOG, generate(config)).alerts
    fired = {(a.kind.value, a.subject) for a in alerts if a.status is AlertStatus.FIRING}
    assert {
        ("key_moment_degraded", "app.login"),
        ("key_moment_degraded", "checkout.payment"),
        ("channel_inconsistent", "purchase/nps/mini_program"),
        ("journey_break", "app.cart -> checkout.payment"),
        ("messaging_fatigue", "nps"),
    } <= fired
    assert len({subject for kind, subject in fired if kind == "over_messaged"}) == 3


def test_trouble_at_and_for_bound_the_degradation_and_the_break_so_incidents_resolve() -> None:
    parser = argparse.ArgumentParser()
    add_simulation_options(parser, demo=True)
    flags = ["--span", "7d", "--start", "2026-11-16T00:00:00Z", "--trouble-at", "3d"]
    config = simulation_config(parser.parse_args([*flags, "--trouble-for", "6h"]))
    day, hour = 86_400_000, 3_600_000
    assert config.degrade_from_ms == config.break_from_ms == config.start_ms + 3 * day
    assert config.degrade_until_ms == config.break_until_ms == config.start_ms + 3 * day + 6 * hour
    endless = simulation_config(parser.parse_args(flags))
    assert endless.degrade_until_ms is None
    assert endless.break_until_ms is None


@pytest.mark.parametrize("flag", ["--span", "--trouble-at", "--trouble-for"])
def test_a_bad_duration_is_refused_by_name_not_with_a_traceback(flag: str) -> None:
    done = cxmon("simulate", flag, "3x", "--output", "-")
    assert done.returncode == 2
    assert f"argument {flag}: '3x' is not a duration such as 30s, 5m, 1h or 7d" in done.stderr
    assert "Traceback" not in done.stderr


CLOSED = "kafka://127.0.0.1:1"


async def test_waiting_for_a_broker_says_so_once_then_names_the_failure(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(broker_url=CLOSED)
    with pytest.raises(TopologyError, match=r"^no broker answers at 127\.0\.0\.1:1: "):
        await ensure_topics(settings, input_topics(settings), timeout_s=1.5)
    assert capsys.readouterr().err == (
        "cxmon: no broker answers at 127.0.0.1:1 yet; trying again for up to 1.5 s\n"
    )
    # aiokafka logs each of the 4 attempts at ERROR; none of them reaches a handler.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []
    assert logging.getLogger("aiokafka").filters == []  # quiet only while waiting


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Ctrl-C reaches the commands a test starts, as in a terminal: a shell that runs the
    tests in the background has them ignore SIGINT, and the commands would inherit that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("interruptible")
def test_publish_with_no_broker_prints_one_line_while_it_waits(tmp_path: Path) -> None:
    lines = tmp_path / "lines.jsonl"
    lines.write_bytes(b'{"event_id": "e1", "customer_id": "c1"}\n')
    waiting = subprocess.Popen(
        [sys.executable, "-m", "streams", "publish", str(lines)],
        env={"PATH": "", "CXMON_BROKER_URL": CLOSED},
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert waiting.stderr is not None
    first = waiting.stderr.readline()
    time.sleep(3)  # six more attempts: six more lines of aiokafka's before
    waiting.send_signal(signal.SIGINT)
    _, rest = waiting.communicate(timeout=30)
    assert first == "cxmon: no broker answers at 127.0.0.1:1 yet; trying again for up to 60 s\n"
    assert rest == ""
    assert waiting.returncode == 130


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running(text: str) -> list[int]:
    """Processes whose command line mentions `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


@pytest.mark.broker
@pytest.mark.usefixtures("interruptible")
def test_the_demo_follows_without_spinning_and_ctrl_c_stops_everything_with_exit_0(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CXMON_DATA_DIR": str(tmp_path),
        "CXMON_BROKER_URL": f"kafka://127.0.0.1:{free_port()}",
        "CXMON_WEB_PORT": str(free_port()),
        "CXMON_SENTIMENT": "none",
    }
    small = ["--customers", "40", "--span", "20m", "--journeys-per-hour", "600"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "streams", "demo", *small],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    try:
        assert demo.stderr is not None
        said: list[str] = []
        while not said or "alerts as they fire" not in said[-1]:
            said.append(demo.stderr.readline())
            assert said[-1], "".join(said)
        lock = tmp_path / "demo" / "worker.lock"  # "pid N on host", once the worker is up
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        worker_pid = int(lock.read_text().split()[1])
        # Following the alerts, with little or nothing to read: it must wait, not spin
        # (it used 0.7-0.9 of a core).
        before, started = cpu_seconds(demo.pid), time.monotonic()
        time.sleep(4)
        share = (cpu_seconds(demo.pid) - before) / (time.monotonic() - started)
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        _, rest = demo.communicate(timeout=90)
        worker_left = Path(f"/proc/{worker_pid}").exists()
        broker_left = running(str(tmp_path / "demo" / "broker"))
    finally:
        # The whole group: a worker and a broker left behind would load every later test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    assert share < 0.25, f"the follower used {share:.2f} of a core"
    assert demo.returncode == 0, rest
    assert "the worker stopped" not in rest
    assert "stopped; the broker's and the worker's logs are in" in rest
    assert not worker_left
    assert broker_left == []
