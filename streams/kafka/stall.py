"""Input partitions whose records wait and whose commits stand still: since when, and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Long enough for a restart, a rebalance or a restore of a million keys (measured at 7 s),
# short enough that on-call hears of a silent monitor within minutes.
STALL_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a group stands on one partition: its commit, and the end of the log."""

    committed: int
    end: int

    @property
    def waiting(self) -> int:
        return max(self.end - self.committed, 0)


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a consumer group as the broker lists it."""

    member_id: str
    instance_id: str | None
    host: str
    partitions: frozenset[tuple[str, int]]

    @property
    def name(self) -> str:
        return self.instance_id or self.member_id


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition with records waiting whose commit has not moved for `seconds`."""

    topic: str
    partition: int
    waiting: int
    seconds: float


class StallWatch:
    """Remembers since when each partition's commit has stood still with records waiting."""

    def __init__(self, after_s: float = STALL_AFTER_S) -> None:
        self.after_s = after_s
        self.still_since: dict[tuple[str, int], tuple[int, float]] = {}

    def observe(self, now_s: float, positions: Mapping[tuple[str, int], Position]) -> list[Stall]:
        """The partitions stalled at `now_s`, given each one's position read at that moment."""
        stalls = []
        for tp, position in sorted(positions.items()):
            if position.waiting == 0:
                self.still_since.pop(tp, None)
                continue
            committed, since = self.still_since.get(tp, (position.committed, now_s))
            if committed != position.committed:
                since = now_s
            self.still_since[tp] = (position.committed, since)
            if now_s - since >= self.after_s:
                stalls.append(Stall(tp[0], tp[1], position.waiting, now_s - since))
        for gone in self.still_since.keys() - positions.keys():
            del self.still_since[gone]
        return stalls


def diagnose(
    group: str, state: str, stalls: Iterable[Stall], members: Iterable[Member], me: str
) -> str:
    """What a stall most likely means and what fixes it, for the worker's log."""
    stalls = list(stalls)
    members = list(members)
    others = [m for m in members if m.name != me]
    mine = next((m for m in members if m.name == me), None)
    held_by = {tp: m for m in others for tp in m.partitions}
    waiting = sum(s.waiting for s in stalls)
    what = (
        f"input partitions {partition_list((s.topic, s.partition) for s in stalls)} have had "
        f"{waiting:,} records "
        f"waiting for {min(s.seconds for s in stalls):.0f} s or more and group {group!r} "
        f"(state {state}) has committed none of them"
    )
    if mine is not None and all((s.topic, s.partition) in mine.partitions for s in stalls):
        return (
            f"{what}: this worker holds them and has finished none; look above in its log for "
            "the error that stopped it, and restart it (it reads them again from the last commit)"
        )
    fix = (
        "if that worker is gone, start it again with its CXMON_DATA_DIR (its instance id is "
        "kept there) or remove it from the group: "
        + " ".join(["cxmon group --remove", *(m.name for m in others)])
    )
    if others and (mine is None or not mine.partitions):
        return (
            f"{what}, and this worker has no input partition: the group also lists "
            f"{describe(others)}, not reading: most likely a worker killed or crashed without "
            "leaving its group, which the broker does not expire (the local broker never does; "
            f"Kafka does after its session timeout); {fix}"
        )
    if any((s.topic, s.partition) in held_by for s in stalls):
        owners = {
            held_by[(s.topic, s.partition)].name
            for s in stalls
            if (s.topic, s.partition) in held_by
        }
        return (
            f"{what}: they are held by {describe(m for m in others if m.name in owners)}, "
            f"which commits nothing; {fix}"
        )
    return (
        f"{what}, and no member holds them: the group's members are {describe(members)}; "
        "a rebalance that never completes is the likely cause (see the brokers' logs)"
    )


def describe(members: Iterable[Member]) -> str:
    shown = (
        f"member {m.name!r} (host {m.host}, {len(m.partitions)} input partitions)" for m in members
    )
    return ", ".join(shown) or "no member"


def partition_list(partitions: Iterable[tuple[str, int]]) -> str:
    """`topic:0-3,6` for each topic: readable however many partitions there are."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(set(partitions)):
        by_topic.setdefault(topic, []).append(partition)
    shown = []
    for topic, numbers in by_topic.items():
        runs: list[list[int]] = []
        for n in numbers:
            if runs and runs[-1][-1] == n - 1:
                runs[-1].append(n)
            else:
                runs.append([n])
        spans = [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]
        shown.append(f"{topic}:{','.join(spans)}")
    return " ".join(shown) or "none"
