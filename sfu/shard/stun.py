"""ICE-lite STUN: check a connectivity check, answer it.

A protocol core with no I/O: the shard hands in a datagram and an address and
gets back the bytes to send, or a :class:`StunError` whose ``reason`` labels the
drop counter. The STUN codec itself is aioice's; this module adds the ICE rules
(RFC 8445 §7.3, RFC 8489 §14.5/§14.7) that an ICE-lite agent must enforce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from aioice import stun


class StunError(ValueError):
    """A STUN datagram we drop; ``reason`` is the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BindingRequest:
    """An authenticated ICE connectivity check addressed to one of our transports."""

    local_ufrag: str
    remote_ufrag: str
    transaction_id: bytes
    use_candidate: bool
    priority: int | None


def is_stun(data: bytes) -> bool:
    """RFC 7983: first byte 0..3 and the magic cookie where RFC 5389 puts it."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == b"\x21\x12\xa4\x42"


def parse_binding_request(
    data: bytes, lookup_pwd: Callable[[str], str | None]
) -> BindingRequest:
    """Check a datagram is a binding request for a known ufrag with valid integrity.

    ``lookup_pwd`` maps our local ufrag to our local ICE password (the key the
    peer signs with), or None when no transport owns that ufrag.
    """
    try:
        message = stun.parse_message(data)
    except Exception:  # aioice raises ValueError, struct.error, UnicodeDecodeError...
        raise StunError("stun_malformed") from None
    if message.message_method != stun.Method.BINDING:
        raise StunError("stun_not_binding")
    if message.message_class == stun.Class.INDICATION:
        # Binding indications are keepalives (RFC 8489 §5); nothing to answer.
        raise StunError("stun_indication")
    if message.message_class != stun.Class.REQUEST:
        raise StunError("stun_not_request")
    if "FINGERPRINT" not in message.attributes:
        raise StunError("stun_no_fingerprint")
    username = message.attributes.get("USERNAME")
    if not isinstance(username, str) or ":" not in username:
        raise StunError("stun_no_username")
    local_ufrag, _, remote_ufrag = username.partition(":")
    pwd = lookup_pwd(local_ufrag)
    if pwd is None:
        raise StunError("stun_unknown_ufrag")
    if not message.check_message_integrity(pwd.encode()):
        raise StunError("stun_bad_integrity")
    priority = message.attributes.get("PRIORITY")
    return BindingRequest(
        local_ufrag=local_ufrag,
        remote_ufrag=remote_ufrag,
        transaction_id=message.transaction_id,
        use_candidate="USE-CANDIDATE" in message.attributes,
        priority=priority if isinstance(priority, int) else None,
    )


def binding_success(
    request: BindingRequest, addr: tuple[str, int], local_pwd: str
) -> bytes:
    """The success response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT."""
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
    response.add_message_integrity(local_pwd.encode())
    return bytes(response)
