"""The `cxmon` command line: broker, worker, publish, simulate, backtest, alerts, group, webhook,
demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from models.decode import InvalidRecord, Reason, parse_timestamp_ms, parse_timestamp_text
from streams.catalog import (
    Catalog,
    CatalogError,
    describe_catalog,
    format_duration,
    load_catalog,
    parse_duration_ms,
)
from streams.commands.backtest import (
    Backtest,
    Span,
    count_lines,
    default_warmup_ms,
    render_json,
    render_text,
)
from streams.commands.dead_letters import DeadLetter
from streams.commands.progress_bar import ProgressBar
from streams.commands.publish import (
    Outgoing,
    alert_line,
    follow,
    numbered_lines,
    read_lines,
    send_all,
)
from streams.commands.simulate import SimulatedRecord, SimulationConfig, generate
from streams.commands.webhook import serve
from streams.core.sentiment import build_scorer
from streams.kafka.broker import BrokerError, LocalBroker, broker_command
from streams.kafka.group import GroupClient, GroupError
from streams.kafka.history import read_history
from streams.kafka.topics import TopologyError
from streams.settings import Settings, SettingsError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.run(settings, args)
    except (SettingsError, CatalogError, BrokerError, TopologyError) as exc:
        print(f"cxmon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxmon", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    broker = commands.add_parser(
        "broker", help="run the local Kafka-protocol broker in the foreground"
    )
    broker.add_argument(
        "--data-dir", type=Path, help="where it keeps data (default: $CXMON_DATA_DIR/broker)"
    )
    broker.add_argument("--fresh", action="store_true", help="delete the data directory first")
    broker.set_defaults(run=run_broker)

    worker = commands.add_parser("worker", help="run the stream worker")
    worker.set_defaults(run=run_worker)

    check = commands.add_parser(
        "check-catalog", help="parse the catalog and report what it declares"
    )
    check.add_argument("path", nargs="?", type=Path, help="catalog file (default: $CXMON_CATALOG)")
    check.set_defaults(run=run_check_catalog)

    publish = commands.add_parser("publish", help="publish JSON lines, each routed to its topic")
    publish.add_argument("file", nargs="?", default="-", help="file of JSON lines, or - for stdin")
    publish.add_argument(
        "--topic", help="send every line unchanged to this topic, keyed by customer or contact"
    )
    publish.set_defaults(run=run_publish)

    simulate = commands.add_parser("simulate", help="publish realistic multi-channel journeys")
    add_simulation_options(simulate)
    simulate.add_argument(
        "--output",
        metavar="FILE",
        help="write the records as JSON lines to FILE (- for stdout) instead of publishing them; "
        "with --start, the same bytes every run",
    )
    simulate.set_defaults(run=run_simulate)

    backtest = commands.add_parser(
        "backtest",
        help="replay recorded input through the monitor: the alerts it would have fired",
    )
    backtest.add_argument(
        "--catalog", type=Path, help="the catalog to test (default: $CXMON_CATALOG)"
    )
    backtest.add_argument(
        "--from",
        dest="from_ms",
        required=True,
        type=timestamp_argument,
        metavar="T1",
        help="start of the event time judged: RFC 3339 with an offset, or epoch milliseconds",
    )
    backtest.add_argument(
        "--to",
        dest="to_ms",
        required=True,
        type=timestamp_argument,
        metavar="T2",
        help="its end (records at T2 or later are skipped; windows ending by T2 are judged)",
    )
    backtest.add_argument(
        "--input",
        metavar="FILE",
        help="JSON lines (- for stdin), routed by their fields as publish routes them "
        "(default: the three input topics, from the beginning to their current end)",
    )
    backtest.add_argument(
        "--warmup",
        type=warmup_argument,
        metavar="DURATION",
        help="event time read before T1 to fill windows, baselines and message counts "
        "(default: the catalog's longest look-back; 0 for none)",
    )
    backtest.add_argument("--json", action="store_true", help="every alert and the summary as JSON")
    backtest.add_argument(
        "--quiet", action="store_true", help="no progress bar: only a line every 30 s"
    )
    backtest.set_defaults(run=run_backtest)

    alerts = commands.add_parser("alerts", help="follow cx.alerts, one line per transition")
    alerts.add_argument("--json", action="store_true", help="print the raw alert objects")
    alerts.add_argument("--from-beginning", action="store_true", help="start at the oldest alert")
    alerts.add_argument(
        "--idle-exit", type=float, metavar="SECONDS", help="exit after this long idle"
    )
    alerts.set_defaults(run=run_alerts)

    dead = commands.add_parser(
        "dead-letters", help="records the worker refused: where from, why, and their bytes"
    )
    dead.add_argument(
        "--from-beginning", action="store_true", help="those already there, from the oldest"
    )
    dead.add_argument("--follow", action="store_true", help="keep waiting for new ones")
    dead.add_argument(
        "--reason",
        action="append",
        choices=[reason.value for reason in Reason],
        help="only this reason (again for several)",
    )
    dead.add_argument("--json", action="store_true", help="one JSON object a line")
    dead.set_defaults(run=run_dead_letters)

    group = commands.add_parser(
        "group", help="the workers' consumer group: members, what each holds, what waits"
    )
    group.add_argument(
        "--remove",
        nargs="+",
        metavar="MEMBER",
        help="take members that are gone out of the group, by instance id or member id",
    )
    group.set_defaults(run=run_group)

    webhook = commands.add_parser(
        "webhook", help="receive Alertmanager notifications and print them as JSON lines"
    )
    webhook.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    webhook.add_argument("--port", type=int, default=9095, help="port (default: 9095)")
    webhook.set_defaults(run=run_webhook)

    demo = commands.add_parser("demo", help="broker, worker, simulator and alerts, all in one")
    add_simulation_options(demo, demo=True)
    demo.set_defaults(run=run_demo)
    return parser


def add_simulation_options(parser: argparse.ArgumentParser, *, demo: bool = False) -> None:
    parser.add_argument("--seed", type=int, default=7, help="same seed, same journeys")
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument(
        "--span",
        type=duration_argument,
        default="3h",
        help="event time to generate, e.g. 3h or 7d",
    )
    parser.add_argument(
        "--start", help="event time of the first record (RFC 3339); default: now - span"
    )
    parser.add_argument("--journeys-per-hour", type=int, default=6_000)
    parser.add_argument(
        "--degrade",
        metavar="TOUCHPOINT",
        default="app.login" if demo else None,
        help="make this touchpoint's experience bad half-way through the span",
    )
    parser.add_argument(
        "--inconsistent-channel",
        type=stage_channel_argument,
        default=("purchase", "mini_program") if demo else None,
        metavar="STAGE:CHANNEL",
        help="answers about that stage given after using that channel are bad over the same "
        "span as --degrade's, e.g. purchase:mini_program",
    )
    parser.add_argument(
        "--fatigue",
        action=argparse.BooleanOptionalAction,
        default=demo,
        help="a campaign messages half the customers 4 times over the same span as "
        "--degrade's, and customers with 4 or more marketing messages in 24 h answer a notch "
        "worse",
    )
    parser.add_argument(
        "--over-messaged",
        type=int,
        default=3 if demo else 0,
        metavar="N",
        help="customers who get a burst of marketing messages",
    )
    parser.add_argument(
        "--break-journey",
        action=argparse.BooleanOptionalAction,
        default=demo,
        help="half the customers who fill the app's cart stop going on to checkout "
        "half-way through the span",
    )
    parser.add_argument(
        "--trouble-at",
        type=duration_argument,
        metavar="DURATION",
        help="when (after the start) the degradation and the journey break begin; "
        "default: half-way through the span",
    )
    parser.add_argument(
        "--trouble-for",
        type=duration_argument,
        metavar="DURATION",
        help="how long they last, so their incidents resolve; default: to the end",
    )
    parser.add_argument("--duplicates", type=float, default=0.01 if demo else 0.0, metavar="RATIO")
    parser.add_argument("--invalid", type=float, default=0.002 if demo else 0.0, metavar="RATIO")
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="event-time seconds per wall second (0: as fast as the broker takes them)",
    )


def simulation_config(args: argparse.Namespace) -> SimulationConfig:
    span_ms: int = args.span
    if args.start:
        start_ms = parse_timestamp_ms(args.start, "--start")
    else:
        start_ms = (int(time.time() * 1000) - span_ms) // 60_000 * 60_000
    trouble_from_ms = start_ms + (span_ms // 2 if args.trouble_at is None else args.trouble_at)
    trouble_until_ms = None if args.trouble_for is None else trouble_from_ms + args.trouble_for
    troubled = bool(args.degrade or args.inconsistent_channel or args.fatigue)
    return SimulationConfig(
        seed=args.seed,
        customers=args.customers,
        start_ms=start_ms,
        duration_ms=span_ms,
        journeys_per_hour=args.journeys_per_hour,
        degrade_touchpoint=args.degrade,
        degrade_from_ms=trouble_from_ms if troubled else None,
        degrade_until_ms=trouble_until_ms if troubled else None,
        over_messaged_customers=args.over_messaged,
        break_from_ms=trouble_from_ms if args.break_journey else None,
        break_until_ms=trouble_until_ms if args.break_journey else None,
        duplicate_ratio=args.duplicates,
        invalid_ratio=args.invalid,
        inconsistent_channel=args.inconsistent_channel,
        fatigue=args.fatigue,
    )


def stage_channel_argument(text: str) -> tuple[str, str]:
    stage, colon, channel = text.partition(":")
    if not colon or not stage or not channel:
        raise argparse.ArgumentTypeError(f"{text!r} is not STAGE:CHANNEL, e.g. purchase:web")
    return stage, channel


def timestamp_argument(text: str) -> int:
    """RFC 3339 with an offset, or epoch milliseconds, as the contract writes times."""
    try:
        return parse_timestamp_text(text, "time")
    except InvalidRecord as exc:
        raise argparse.ArgumentTypeError(exc.detail.removeprefix("time: ")) from None


def duration_argument(text: str) -> int:
    """A duration as the catalog writes it (30s, 5m, 1h, 7d), in milliseconds."""
    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def warmup_argument(text: str) -> int:
    return 0 if text.strip() == "0" else duration_argument(text)


def run_broker(settings: Settings, args: argparse.Namespace) -> int:
    url = urlparse(settings.broker_url)
    data_dir: Path = args.data_dir or settings.data_dir / "broker"
    if args.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = broker_command(url.hostname or "127.0.0.1", url.port or 9092, data_dir)
    os.execv(command[0], command)


def run_check_catalog(settings: Settings, args: argparse.Namespace) -> int:
    path = args.path or settings.catalog
    catalog = load_catalog(path)
    warn_of(catalog)
    print("\n".join(describe_catalog(catalog, str(path))))
    return 0


def warn_of(catalog: Catalog) -> None:
    for warning in catalog.warnings:
        print(f"cxmon: {warning}", file=sys.stderr)


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    # Faust is imported only by the command that runs it: the others start in a blink.
    from agents.worker import run  # noqa: PLC0415

    return run(settings)


def run_publish(settings: Settings, args: argparse.Namespace) -> int:
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    with stream:
        sent, errors = asyncio.run(
            send_all(settings, read_lines(stream, settings.topics, args.topic))
        )
    print(f"published {sent:,} messages; {len(errors)} lines refused", file=sys.stderr)
    return 1 if errors else 0


def simulated_messages(
    settings: Settings, records: Iterator[SimulatedRecord], speed: float
) -> Iterator[Outgoing]:
    topics = {
        "touchpoint_events": settings.topics.touchpoint_events,
        "survey_answers": settings.topics.survey_answers,
        "identity_links": settings.topics.identity_links,
    }
    first_ms: int | None = None
    wall_start = time.monotonic()
    for record in records:
        if speed > 0:
            first_ms = record.occurred_at_ms if first_ms is None else first_ms
            due = (record.occurred_at_ms - first_ms) / 1000 / speed
            delay = due - (time.monotonic() - wall_start)
            if delay > 0:
                time.sleep(delay)
        yield Outgoing(topics[record.role], record.key, record.value)


def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
    config = simulation_config(args)
    if args.output is not None:
        written = 0
        output = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        with output:
            for record in generate(config):
                output.write(record.value + b"\n")
                written += 1
        print(
            f"wrote {written:,} records over {format_duration(args.span)} of event time",
            file=sys.stderr,
        )
        return 0
    records = simulated_messages(settings, generate(config), args.speed)
    sent, _ = asyncio.run(send_all(settings, records))
    print(
        f"simulated {sent:,} messages over {format_duration(args.span)} of event time",
        file=sys.stderr,
    )
    return 0


def run_backtest(settings: Settings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.from_ms >= args.to_ms:
        print("cxmon: backtest: --from must be before --to", file=sys.stderr)
        return EXIT_USAGE
    catalog_path = args.catalog or settings.catalog
    catalog = load_catalog(catalog_path)
    warn_of(catalog)
    warmup = default_warmup_ms(catalog) if args.warmup is None else args.warmup
    backtest = Backtest(
        catalog, build_scorer(settings.sentiment), Span(args.from_ms, args.to_ms, warmup)
    )
    interactive = sys.stderr.isatty() and not args.quiet
    bar = ProgressBar(None, sys.stderr, interactive=interactive)
    if args.input is not None:
        try:
            stream = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
        except OSError as exc:
            print(f"cxmon: backtest: {args.input}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        with stream:
            if stream.seekable():
                bar.set_total(count_lines(stream))
            for _, line in numbered_lines(stream):
                backtest.add_line(line)
                bar.advance()
    else:

        async def read_topics() -> None:
            async for role, value in read_history(settings, bar.set_total):
                backtest.add_record(role, value)
                bar.advance()

        asyncio.run(read_topics())
    bar.close()
    read_s = time.monotonic() - started
    if not args.quiet:
        print(
            f"read {bar.done:,} records in {read_s:.1f} s ({bar.done / max(read_s, 1e-9):,.0f}/s);"
            " judging every window ...",
            file=sys.stderr,
        )
    report = backtest.report()
    if args.json:
        sys.stdout.buffer.write(render_json(report, str(catalog_path)))
        sys.stdout.flush()
    else:
        print(render_text(report, str(catalog_path)), end="")
    if not args.quiet:
        total_s = time.monotonic() - started
        print(
            f"judged in {total_s - read_s:.1f} s; {total_s:.1f} s in all, "
            f"{bar.done / max(total_s, 1e-9):,.0f} records/s",
            file=sys.stderr,
        )
    return 0


def run_alerts(settings: Settings, args: argparse.Namespace) -> int:
    async def show() -> None:
        async for alert in follow(
            settings,
            settings.topics.alerts,
            from_beginning=args.from_beginning,
            idle_timeout_s=args.idle_exit,
        ):
            print(alert.value.decode() if args.json else alert_line(alert.value), flush=True)

    asyncio.run(show())
    return 0


# How long the topic must stay quiet for what is there to have been read.
CAUGHT_UP_S = 2.0


def run_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    wanted = set(args.reason or ())
    shown = 0

    async def show() -> None:
        nonlocal shown
        async for record in follow(
            settings,
            settings.topics.dead_letters,
            from_beginning=args.from_beginning,
            idle_timeout_s=None if args.follow else CAUGHT_UP_S,
        ):
            letter = DeadLetter.of(record.timestamp_ms, record.key, record.value, record.headers)
            if wanted and letter.reason not in wanted:
                continue
            shown += 1
            print(letter.json().decode() if args.json else letter.line(), flush=True)

    asyncio.run(show())
    if not shown and not args.follow:
        topic = settings.topics.dead_letters
        if args.from_beginning:
            print(f"cxmon: no dead letters on {topic}", file=sys.stderr)
        else:
            print(
                f"cxmon: no new dead letters on {topic} (--from-beginning shows those there)",
                file=sys.stderr,
            )
    return 0


def run_group(settings: Settings, args: argparse.Namespace) -> int:
    topics = settings.topics
    inputs = (topics.touchpoint_events, topics.survey_answers, topics.identity_links)

    async def show() -> None:
        async with GroupClient(settings) as client:
            if args.remove:
                for member in await client.remove(args.remove, inputs):
                    print(f"removed {member.name} ({member.host})")
            group = await client.describe(inputs)
            positions = await client.positions(inputs)
        print(f"group {settings.app_id}: {group.state}, {len(group.members)} members")
        for member in group.members:
            held = (
                ", ".join(f"{t}:{p}" for t, p in sorted(member.partitions)) or "no input partition"
            )
            print(f"  {member.name}  host {member.host}  {held}")
        waiting = {tp: position.waiting for tp, position in positions.items() if position.waiting}
        print(
            "records waiting: "
            + (", ".join(f"{t}:{p} {n:,}" for (t, p), n in sorted(waiting.items())) or "none")
        )

    try:
        asyncio.run(show())
    except GroupError as exc:
        print(f"cxmon: {exc}", file=sys.stderr)
        return 1
    return 0


def run_webhook(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(serve(args.host, args.port))
    return 0


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Everything on one machine: a fresh local broker, a worker, the simulator, the alerts.

    Ctrl-C (or SIGTERM) is how a demo ends: everything stops and the exit is 0, so `make
    run` reports no error. Only a worker that stops on its own is a failure (exit 1).
    """
    url = urlparse(settings.broker_url)
    data_dir = settings.data_dir / "demo"
    broker = LocalBroker(url.hostname or "127.0.0.1", url.port or 9092, data_dir / "broker")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"starting the local broker on {broker.bootstrap_servers} ...", file=sys.stderr)
        with broker.start(fresh=True), _worker(data_dir) as worker:
            return _demo(settings, args, worker)
    except KeyboardInterrupt:
        print(f"stopped; the broker's and the worker's logs are in {data_dir}", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        broker.stop()  # stopped already, unless Ctrl-C came while it was starting


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _demo(settings: Settings, args: argparse.Namespace, worker: subprocess.Popen[bytes]) -> int:
    print("worker started; publishing simulated journeys ...", file=sys.stderr)
    config = simulation_config(args)
    sent, _ = asyncio.run(
        send_all(settings, simulated_messages(settings, generate(config), args.speed))
    )
    print(f"published {sent:,} messages; alerts as they fire (Ctrl-C to stop):", file=sys.stderr)

    async def show() -> None:
        alerts = follow(
            settings,
            settings.topics.alerts,
            from_beginning=True,
            stop=lambda: worker.poll() is not None,
        )
        async for alert in alerts:
            print(alert_line(alert.value), flush=True)

    asyncio.run(show())
    # The follower ends by itself only when the worker has stopped: nobody asked it to.
    print(f"the worker stopped (exit {worker.returncode}); see its log", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _worker(data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "CXMON_DATA_DIR": str(data_dir)}
    log_path = data_dir / "worker.log"
    with log_path.open("ab") as log:
        # In a session of its own, as the broker: Ctrl-C reaches the demo alone, which stops
        # the worker here. Reached by it too, the worker stopped first, and the demo took
        # that for the worker failing.
        process = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(f"worker log: {log_path}", file=sys.stderr)
    try:
        yield process
    finally:
        if process.poll() is None:
            print("stopping the worker and the broker ...", file=sys.stderr)
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            # Too slow to stop, or Ctrl-C again: killed, so that none is left behind.
            process.kill()
            process.wait()
