"""Hopping windows over buckets kept by their start: which windows close, what is kept."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Hopping:
    """Windows of `window_ms` ending every `step_ms`, judged once each, in order."""

    window_ms: int
    step_ms: int

    def bucket_of(self, at_ms: int) -> int:
        return at_ms - at_ms % self.step_ms

    def horizon(self, evaluated_until_ms: int | None) -> int | None:
        """Buckets before this start feed no window still to be judged."""
        if evaluated_until_ms is None:
            return None
        return evaluated_until_ms + self.step_ms - self.window_ms

    def closing(
        self, buckets: MutableMapping[int, Any], evaluated_until_ms: int | None, closed_ms: int
    ) -> Iterator[tuple[int, list[int]]]:
        """Each window not judged yet that ends by `closed_ms` and holds a bucket, in order:
        its end and the starts of its buckets."""
        step = self.step_ms
        last_end = closed_ms // step * step
        if evaluated_until_ms is not None:
            end = evaluated_until_ms + step
        elif buckets:
            end = min(buckets) + step
        else:
            return
        while end <= last_end:
            starts = [s for s in buckets if end - self.window_ms <= s < end]
            if not starts:
                # Nothing in this window: jump to the first window holding the next bucket.
                later = [s for s in buckets if s >= end]
                end = min(later) + step if later else last_end + step
                continue
            yield end, starts
            end += step

    def close(
        self, buckets: MutableMapping[int, Any], evaluated_until_ms: int | None, closed_ms: int
    ) -> int | None:
        """Once every window ending by `closed_ms` is judged: how far that is, and the
        buckets no window still to be judged needs are dropped."""
        last_end = closed_ms // self.step_ms * self.step_ms
        if evaluated_until_ms is None and not buckets:
            return None
        if evaluated_until_ms is None or last_end > evaluated_until_ms:
            evaluated_until_ms = last_end
        horizon = self.horizon(evaluated_until_ms)
        assert horizon is not None
        for start in [s for s in buckets if s < horizon]:
            del buckets[start]
        return evaluated_until_ms
