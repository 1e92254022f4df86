"""The worker's consumer group as the broker sees it: members, positions, and removing one.

aiokafka asks for DescribeGroups v0-v3 and has no LeaveGroup v3, so neither shows nor
removes a member by its instance id (KIP-345): both requests are declared here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

from streams.kafka.stall import Member, Position
from streams.settings import Settings

TEXT = String("utf-8")


class DescribeGroupsV4Response(Response):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 4
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group", TEXT),
                ("state", TEXT),
                ("protocol_type", TEXT),
                ("protocol", TEXT),
                (
                    "members",
                    Array(
                        ("member_id", TEXT),
                        ("group_instance_id", TEXT),
                        ("client_id", TEXT),
                        ("client_host", TEXT),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class DescribeGroupsV4Request(RequestStruct):  # type: ignore[misc]
    API_KEY = 15
    API_VERSION = 4
    RESPONSE_TYPE = DescribeGroupsV4Response
    SCHEMA = Schema(("groups", Array(TEXT)), ("include_authorized_operations", Boolean))


class DescribeGroup(Request[DescribeGroupsV4Request]):  # type: ignore[misc]
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self.group = group

    def build(self, request_struct_class: type[DescribeGroupsV4Request]) -> Any:
        return request_struct_class([self.group], False)


class LeaveGroupV3Response(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("members", Array(("member_id", TEXT), ("group_instance_id", TEXT), ("error_code", Int16))),
    )


class LeaveGroupV3Request(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupV3Response
    SCHEMA = Schema(
        ("group_id", TEXT), ("members", Array(("member_id", TEXT), ("group_instance_id", TEXT)))
    )


class RemoveMembers(Request[LeaveGroupV3Request]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group: str, members: list[Member]) -> None:
        self.group = group
        self.members = members

    def build(self, request_struct_class: type[LeaveGroupV3Request]) -> Any:
        return request_struct_class(
            self.group, [(m.member_id, m.instance_id) for m in self.members]
        )


@dataclass(frozen=True, slots=True)
class Group:
    state: str
    members: list[Member]


class GroupError(RuntimeError):
    """The broker refused a request about the group, named with its error."""


class GroupClient:
    """One connection to the cluster for reading a group again and again (the worker's watch)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group_id = settings.app_id
        options = settings.broker_security.client_options()
        self.client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, **options)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **options)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, **options
        )

    async def __aenter__(self) -> GroupClient:
        await self.client.bootstrap()
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()
        await self.client.close()

    async def describe(self, topics: Collection[str]) -> Group:
        """The group's state and members, each with the partitions of `topics` it holds."""
        coordinator = await self.client.coordinator_lookup(CoordinationType.GROUP, self.group_id)
        response = await self.client.send(coordinator, DescribeGroup(self.group_id))
        (group,) = response.groups
        if group[0]:
            raise GroupError(f"describing group {self.group_id!r}: error code {group[0]}")
        members = []
        for member_id, instance_id, _, host, _, raw in group[5]:
            # Empty while a rebalance is under way: the member holds nothing yet.
            owned = ConsumerProtocolMemberAssignment.decode(raw).partitions() if raw else []
            members.append(
                Member(
                    member_id=member_id,
                    instance_id=instance_id or None,
                    host=host.lstrip("/"),
                    partitions=frozenset((t, p) for t, p in owned if t in topics),
                )
            )
        return Group(group[2], members)

    async def positions(self, topics: Iterable[str]) -> dict[tuple[str, int], Position]:
        """The group's commit and the log's end on every partition of `topics`."""
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return {}
        committed = await self.admin.list_consumer_group_offsets(self.group_id)
        ends = await self.consumer.end_offsets(partitions)
        uncommitted = [tp for tp in partitions if committed.get(tp, None) is None]
        starts = await self.consumer.beginning_offsets(uncommitted) if uncommitted else {}
        positions = {}
        for tp in partitions:
            meta = committed.get(tp)
            start = meta.offset if meta is not None and meta.offset >= 0 else starts.get(tp, 0)
            positions[(tp.topic, tp.partition)] = Position(start, ends[tp])
        return positions

    async def remove(self, names: Collection[str], topics: Collection[str]) -> list[Member]:
        """Take members out of the group by instance id or member id; the ones removed."""
        group = await self.describe(topics)
        chosen = [m for m in group.members if m.member_id in names or m.instance_id in names]
        unknown = set(names) - {m.member_id for m in chosen} - {m.instance_id for m in chosen}
        if unknown:
            raise GroupError(
                f"group {self.group_id!r} has no member {', '.join(sorted(unknown))}; "
                f"it has: {', '.join(m.name for m in group.members) or 'none'}"
            )
        coordinator = await self.client.coordinator_lookup(CoordinationType.GROUP, self.group_id)
        response = await self.client.send(coordinator, RemoveMembers(self.group_id, chosen))
        errors = [response.error_code, *(member[2] for member in response.members)]
        if any(errors):
            raise GroupError(f"removing {', '.join(names)} from {self.group_id!r}: {response}")
        return chosen
