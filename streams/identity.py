"""Contact-to-customer resolution: the latest identity link of a contact wins, in event time."""

from __future__ import annotations

import orjson

from models.records import IdentityLink


def encode_link(link: IdentityLink) -> bytes:
    return orjson.dumps([link.customer_id, link.linked_at_ms])


def linked_customer(encoded: bytes | None) -> str | None:
    if encoded is None:
        return None
    customer_id: str = orjson.loads(encoded)[0]
    return customer_id


def supersedes(encoded: bytes, current: bytes | None) -> bool:
    """A link replaces the stored one unless it is older: replays and reorderings agree."""
    if current is None:
        return True
    new_at: int = orjson.loads(encoded)[1]
    current_at: int = orjson.loads(current)[1]
    return new_at >= current_at
