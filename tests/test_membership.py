"""The worker's instance id and data-dir lock, and the stall watch's verdicts, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.membership import DataDirInUse, claim_data_dir
from streams.kafka.stall import Member, Position, Stall, StallWatch, diagnose, partition_list
from streams.settings import Settings

EVENTS = "cx.touchpoint-events"


def settings(data_dir: Path, instance_id: str | None = None) -> Settings:
    return Settings(data_dir=data_dir, instance_id=instance_id)


def test_the_instance_id_is_made_once_and_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = claim_data_dir(settings(tmp_path / "w"))
    made = first.instance_id
    first.lock.close()  # the process ends: the lock goes with it

    again = claim_data_dir(settings(tmp_path / "w"))
    assert again.instance_id == made
    assert made.startswith("cx-monitor-")
    assert (tmp_path / "w" / "instance-id").read_text().strip() == made


def test_two_data_dirs_on_one_host_get_two_ids(tmp_path: Path) -> None:
    one = claim_data_dir(settings(tmp_path / "a"))
    two = claim_data_dir(settings(tmp_path / "b"))
    assert one.instance_id != two.instance_id


def test_cxmon_instance_id_overrides_the_kept_one(tmp_path: Path) -> None:
    claim_data_dir(settings(tmp_path / "w")).lock.close()
    assert claim_data_dir(settings(tmp_path / "w", "worker-1")).instance_id == "worker-1"


def test_a_second_worker_on_a_data_dir_in_use_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    held = claim_data_dir(settings(tmp_path / "w"))
    with pytest.raises(DataDirInUse, match=r"in use by a running worker \(pid \d+ on .+\)"):
        claim_data_dir(settings(tmp_path / "w"))
    held.lock.close()
    claim_data_dir(settings(tmp_path / "w"))  # free again once the holder is gone


def test_a_partition_stalls_once_its_commit_stands_still_with_records_waiting() -> None:
    watch = StallWatch(after_s=60)
    tp = (EVENTS, 0)
    assert watch.observe(0, {tp: Position(committed=5, end=9)}) == []
    assert watch.observe(59.9, {tp: Position(5, 12)}) == []
    assert watch.observe(60, {tp: Position(5, 12)}) == [Stall(EVENTS, 0, 7, 60)]


def test_a_commit_that_moves_or_nothing_waiting_starts_the_clock_again() -> None:
    watch = StallWatch(after_s=60)
    tp = (EVENTS, 0)
    watch.observe(0, {tp: Position(5, 9)})
    assert watch.observe(50, {tp: Position(6, 9)}) == []  # it moved: read, if slowly
    assert watch.observe(100, {tp: Position(6, 9)}) == []  # 50 s since it moved
    assert watch.observe(110, {tp: Position(6, 9)}) == [Stall(EVENTS, 0, 3, 60)]
    assert watch.observe(120, {tp: Position(9, 9)}) == []  # caught up
    assert watch.observe(130, {tp: Position(9, 10)}) == []  # a new record: a new clock
    assert watch.observe(189, {tp: Position(9, 10)}) == []


def member(name: str, *partitions: int) -> Member:
    return Member(f"faust-{name}", name, "10.0.0.1", frozenset((EVENTS, p) for p in partitions))


STALLS = [Stall(EVENTS, 0, 10, 60), Stall(EVENTS, 1, 5, 70)]


def test_a_worker_with_nothing_beside_a_member_that_does_not_read_is_told_to_remove_it() -> None:
    said = diagnose("cx", "CompletingRebalance", STALLS, [member("old"), member("me")], "me")
    assert "cx.touchpoint-events:0-1 have had 15 records waiting for 60 s" in said
    assert "this worker has no input partition" in said
    assert "killed or crashed without leaving its group" in said
    assert said.endswith("cxmon group --remove old")


def test_partitions_held_by_another_member_that_commits_nothing_name_it() -> None:
    said = diagnose("cx", "Stable", STALLS, [member("old", 0, 1), member("me", 2, 3)], "me")
    assert "they are held by member 'old' (host 10.0.0.1, 2 input partitions)" in said
    assert said.endswith("cxmon group --remove old")


def test_partitions_this_worker_holds_point_at_its_own_log() -> None:
    said = diagnose("cx", "Stable", STALLS, [member("me", 0, 1)], "me")
    assert "this worker holds them and has finished none" in said
    assert "--remove" not in said


def test_partition_lists_are_shortened_to_runs_per_topic() -> None:
    tps = [(EVENTS, p) for p in (0, 1, 2, 3, 6)] + [("cx.links", 7)]
    assert partition_list(tps) == "cx.links:7 cx.touchpoint-events:0-3,6"
    assert partition_list([]) == "none"
