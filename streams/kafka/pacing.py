"""Fetch pacing for any aiokafka consumer: a broker that answers at once is not asked at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

# The local broker ignores `fetch.max.wait.ms` and `fetch.min.bytes` (measured): a fetch
# of nothing comes back at once and the consumer sends the next, so a consumer with
# nothing to read spins a core. Waiting out the rest of an interval after each fetch
# bounds that; a record then waits at most the interval longer.


def pace_fetches(consumer: Any, interval_s: float) -> None:
    """After each fetch of a started aiokafka consumer, wait out the rest of `interval_s`.

    The fetcher sends a node its next fetch only once the previous one is done, so a
    fetch that finishes late paces the next. Only this consumer's fetcher is changed.
    """
    fetcher = consumer._fetcher
    fetch = fetcher._proc_fetch_request

    async def paced(assignment: Any, node_id: int, request: Any) -> Any:
        started = time.monotonic()
        result = await fetch(assignment, node_id, request)
        rest = interval_s - (time.monotonic() - started)
        if rest > 0:
            # Cancelled when the consumer closes or loses its assignment; like the fetch
            # itself, the wait then ends quietly (closing awaits it and expects no error).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(rest)
        return result

    fetcher._proc_fetch_request = paced
