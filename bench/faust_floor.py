"""The framework's floor: a bare Faust agent that only decodes each record, run as a process.

Stock faust-streaming, as its documentation writes an agent: default settings, no tables,
records taken `BATCH` at a time; with `--framework worker`, Faust as the worker runs it:
its app class (no Monitor sensor), its transport (`agents/transport.py`: paced fetches,
records handed over without tasks) and its garbage collector thresholds.

It reads the input topics from the start and, once it has seen `--records`, writes its CPU
time and wall time from its first batch to its last to `--out` as JSON; the bench then
stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from pathlib import Path

import faust
import orjson
from faust.types import StreamT

from agents.topology import App
from agents.transport import use_paced_fetches
from agents.worker import GC_THRESHOLDS

BATCH = 2_000


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="kafka://host:port")
    parser.add_argument("--topics", required=True, help="comma-separated input topics")
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--framework", choices=("stock", "worker"), default="stock")
    parser.add_argument("--fetch-interval-ms", type=float, default=10)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    worker = args.framework == "worker"
    app = (App if worker else faust.App)(
        f"bench-faust-floor-{time.monotonic_ns()}",
        broker=args.broker,
        datadir=str(args.data_dir),
        autodiscover=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    if worker:
        use_paced_fetches(app, args.fetch_interval_ms / 1000)
        gc.set_threshold(*GC_THRESHOLDS)
    inputs = app.topic(*args.topics.split(","), key_type=bytes, value_type=bytes)

    @app.agent(inputs)
    async def decode(stream: StreamT[bytes]) -> None:
        seen = first = 0
        started = cpu = 0.0
        async for values in stream.take(BATCH, within=0.1):
            for value in values:
                with contextlib.suppress(orjson.JSONDecodeError):
                    orjson.loads(value or b"")
            seen += len(values)
            if not first:
                # Timed from the end of the first batch: the group's join is not counted.
                first, started, cpu = seen, time.perf_counter(), time.process_time()
            elif seen >= args.records:
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                timed = {"records": seen - first, "seconds": elapsed, "cpu_seconds": cpu}
                written = args.out.with_suffix(".partial")
                written.write_bytes(orjson.dumps(timed))
                written.replace(args.out)  # whole, or not there yet

    faust.Worker(app, loglevel="INFO", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
