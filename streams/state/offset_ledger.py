"""Which offsets of a partition are read, done and committed, with no record skipped unseen."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class Admission(Enum):
    TAKE = "take"  # the next record of its partition: process it
    SEEN = "seen"  # taken already, delivered again after a seek: drop it
    REWIND = "rewind"  # records before it were never delivered: read again from `next_offset`
    STALE = "stale"  # fetched before the rewind: drop it, it will come again in order


@dataclass
class Cursor:
    """One partition: every offset below `next_offset` was taken, every one below `done` processed.

    `hole_end` is the first offset seen past a hole while the partition is read again from
    the hole. Seen a second time, it is what the log holds next: the offsets before it are
    not in the log (compacted away, or transaction markers) and there is nothing to wait for.
    """

    next_offset: int
    done: int
    committed: int
    hole_end: int | None = None


class Cursors(Generic[Key]):
    """The consumer may drop fetched records around a seek or a rebalance and deliver what
    follows: a record is processed only in offset order, so a commit never passes one unread.
    """

    def __init__(self) -> None:
        self.cursors: dict[Key, Cursor] = {}
        # Where each partition's next record was expected when last looked at, and where
        # it was read again from for lack of it, with how far the consumer had got then.
        self.looked: dict[Key, int] = {}
        self.rewound: dict[Key, tuple[int, int]] = {}

    def unknown(self, keys: Iterable[Key]) -> set[Key]:
        return {key for key in keys if key not in self.cursors}

    def start(self, key: Key, committed: int) -> None:
        """The partition is read from `committed`, what the group committed or the log start."""
        self.cursors[key] = Cursor(committed, committed, committed)

    def admit(self, key: Key, offset: int) -> Admission:
        cursor = self.cursors[key]
        if offset < cursor.next_offset:
            return Admission.SEEN
        if offset in (cursor.next_offset, cursor.hole_end):
            # The second sighting of a hole's end, after the rewind: the hole is the log's.
            cursor.next_offset, cursor.hole_end = offset + 1, None
            return Admission.TAKE
        if cursor.hole_end is None or offset < cursor.hole_end:
            cursor.hole_end = offset
            return Admission.REWIND
        return Admission.STALE

    def finished(self, key: Key, last_offset: int) -> None:
        """A batch taken through `last_offset` is processed, its sends and writes issued."""
        cursor = self.cursors.get(key)
        if cursor is not None and last_offset >= cursor.done:
            cursor.done = last_offset + 1

    def abandon(self, key: Key) -> int | None:
        """A batch was taken but not processed: read again from the last one done."""
        cursor = self.cursors.get(key)
        if cursor is None:
            return None
        cursor.next_offset, cursor.hole_end = cursor.done, None
        return cursor.done

    def due(self, keys: Iterable[Key] | None = None) -> dict[Key, int]:
        """Offsets to commit: every partition done further than it is committed."""
        wanted = self.cursors.keys() if keys is None else keys
        return {
            key: cursor.done
            for key in wanted
            if (cursor := self.cursors.get(key)) is not None and cursor.done > cursor.committed
        }

    def committed(self, offsets: dict[Key, int]) -> None:
        for key, offset in offsets.items():
            cursor = self.cursors.get(key)
            if cursor is not None:
                cursor.committed = max(cursor.committed, offset)

    def forget(self, keys: Iterable[Key]) -> None:
        """Partitions revoked: whoever reads them next starts from what the group committed."""
        for key in keys:
            self.cursors.pop(key, None)
            self.looked.pop(key, None)
            self.rewound.pop(key, None)

    def undelivered(self, positions: dict[Key, int]) -> dict[Key, int]:
        """Partitions the consumer has read past their next record, which has not come since
        the last look: where each must be read again from.

        A hole is found when a record after it arrives. Records dropped on the way at the
        end of what a partition holds leave nothing after them to show it, and the partition
        waits for them for good. Between two looks a partition working through a backlog
        takes records; one that takes none while the consumer is past it lost them. If read
        again it ends at the same place with nothing delivered, the gap is the log's own
        (compacted away, or a transaction marker): the partition is done up to there.
        """
        lost: dict[Key, int] = {}
        for key, position in positions.items():
            cursor = self.cursors.get(key)
            if cursor is None:
                continue
            expected = cursor.next_offset
            if position > expected and self.looked.get(key) == expected:
                if self.rewound.get(key) != (expected, position):
                    lost[key] = expected
                    self.rewound[key] = (expected, position)
                    cursor.hole_end = None
                elif cursor.done == expected:
                    cursor.next_offset = cursor.done = position
                    expected = position
            self.looked[key] = expected
        return lost
