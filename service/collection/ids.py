"""What an item id may be: what every route can address in a URL path."""

from __future__ import annotations

MAX_ID = 256
ID_RULE = (
    f"1..{MAX_ID} printable characters, without '/' or '\\', and not '.' or '..' "
    "(URL clients rewrite those)"
)


def valid_id(item_id: str) -> bool:
    """Whether every route can address ``item_id`` in a URL path (see ID_RULE)."""
    return (
        0 < len(item_id) <= MAX_ID
        and item_id.isprintable()
        and "/" not in item_id
        and "\\" not in item_id
        and item_id not in (".", "..")
    )
