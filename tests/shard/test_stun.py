"""ICE-lite connectivity checks, against the RFC 5769 test vectors."""

from __future__ import annotations

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.shard.stun import BindingRequest, StunError, binding_success, is_stun, parse_binding_request

# RFC 5769 §2.1 "Sample Request": short-term credentials, username "evtj:h6vY".
RFC5769_REQUEST = bytes.fromhex(
    "00010058"  # Binding request, length 88
    "2112a442"  # magic cookie
    "b7e7a701bc34d686fa87dfae"  # transaction id
    "80220010" "5354554e20746573742063" "6c69656e74"  # SOFTWARE "STUN test client"
    "00240004" "6e0001ff"  # PRIORITY
    "80290008" "932ff9b151263b36"  # ICE-CONTROLLED
    "00060009" "6576746a3a68367659202020"  # USERNAME "evtj:h6vY" (+ 3 padding bytes)
    "00080014" "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004" "e57a3bcf"  # FINGERPRINT
)
# RFC 5769 §2.2 "Sample IPv4 Response".
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c"  # Binding success response, length 60
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"  # SOFTWARE "test vector" (+ 1 padding byte)
    "00200008" "0001a147e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "00080014" "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"  # MESSAGE-INTEGRITY
    "80280004" "c07d4c96"  # FINGERPRINT
)
RFC5769_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

LOCAL_UFRAG, LOCAL_PWD = "sfuA", "sfu-local-password-0123456"


def rfc_lookup(ufrag: str) -> str | None:
    return RFC5769_PASSWORD if ufrag == "evtj" else None


def our_lookup(ufrag: str) -> str | None:
    return LOCAL_PWD if ufrag == LOCAL_UFRAG else None


def make_request(
    username: str | None = f"{LOCAL_UFRAG}:peer",
    pwd: str | None = LOCAL_PWD,
    *,
    method: stun.Method = stun.Method.BINDING,
    message_class: stun.Class = stun.Class.REQUEST,
    use_candidate: bool = False,
    priority: int | None = 0x6E7F1EFF,
    fingerprint: bool = True,
) -> bytes:
    """A connectivity check as a browser sends it (RFC 8445 §7.1.1), built with aioice."""
    message = stun.Message(message_method=method, message_class=message_class)
    if username is not None:
        message.attributes["USERNAME"] = username
    if priority is not None:
        message.attributes["PRIORITY"] = priority
    message.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if use_candidate:
        message.attributes["USE-CANDIDATE"] = None
    if pwd is not None:
        message.add_message_integrity(pwd.encode())  # also adds FINGERPRINT
    elif fingerprint:
        message.add_fingerprint()
    data = bytes(message)
    if pwd is not None and not fingerprint:
        data = data[:-8]
        data = data[:2] + (len(data) - 20).to_bytes(2, "big") + data[4:]
    return data


# --- the codec we rely on -------------------------------------------------------------


def test_aioice_parses_rfc5769_ipv4_response() -> None:
    message = stun.parse_message(RFC5769_IPV4_RESPONSE)  # checks the FINGERPRINT
    assert message.message_method == stun.Method.BINDING
    assert message.message_class == stun.Class.RESPONSE
    assert message.transaction_id == RFC5769_TRANSACTION_ID
    assert message.attributes["SOFTWARE"] == "test vector"
    assert message.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert message.check_message_integrity(RFC5769_PASSWORD.encode())
    assert not message.check_message_integrity(b"not the password")


def test_is_stun_on_rfc5769_vectors_and_media() -> None:
    assert is_stun(RFC5769_REQUEST)
    assert is_stun(RFC5769_IPV4_RESPONSE)
    assert not is_stun(RFC5769_REQUEST[:19])
    assert not is_stun(b"\x80\x60" + RFC5769_REQUEST[2:])  # RTP first byte
    assert not is_stun(b"\x16\xfe\xfd" + RFC5769_REQUEST[3:])  # DTLS first byte
    assert not is_stun(RFC5769_REQUEST[:4] + b"\x00\x00\x00\x00" + RFC5769_REQUEST[8:])  # no cookie


# --- parse_binding_request ------------------------------------------------------------


def test_rfc5769_sample_request_is_accepted() -> None:
    request = parse_binding_request(RFC5769_REQUEST, rfc_lookup)
    assert request == BindingRequest(
        local_ufrag="evtj",
        remote_ufrag="h6vY",
        transaction_id=RFC5769_TRANSACTION_ID,
        use_candidate=False,
        priority=0x6E0001FF,
    )


def test_lookup_is_asked_for_the_local_ufrag() -> None:
    asked: list[str] = []

    def lookup(ufrag: str) -> str | None:
        asked.append(ufrag)
        return rfc_lookup(ufrag)

    parse_binding_request(RFC5769_REQUEST, lookup)
    assert asked == ["evtj"]


def test_rfc5769_request_with_wrong_password() -> None:
    with pytest.raises(StunError) as excinfo:
        parse_binding_request(RFC5769_REQUEST, lambda ufrag: "VOkJxbRl1RmTxUk/WvJxBT")
    assert excinfo.value.reason == "stun_bad_integrity"
    assert str(excinfo.value) == "stun_bad_integrity"


def test_rfc5769_request_for_unknown_ufrag() -> None:
    with pytest.raises(StunError) as excinfo:
        parse_binding_request(RFC5769_REQUEST, lambda ufrag: None)
    assert excinfo.value.reason == "stun_unknown_ufrag"


@pytest.mark.parametrize(("offset", "reason"), [
    (8, "stun_malformed"),  # transaction id
    (30, "stun_malformed"),  # SOFTWARE
    (52, "stun_malformed"),  # ICE-CONTROLLED
    (70, "stun_malformed"),  # USERNAME
    (90, "stun_malformed"),  # MESSAGE-INTEGRITY
    (104, "stun_malformed"),  # FINGERPRINT value
    (3, "stun_malformed"),  # message length
    (100, "stun_no_fingerprint"),  # FINGERPRINT type 0x8028 -> 0x8128, an unknown attribute
])
def test_rfc5769_request_with_a_flipped_byte(offset: int, reason: str) -> None:
    # A single changed byte anywhere before it always breaks the CRC-32 FINGERPRINT.
    data = bytearray(RFC5769_REQUEST)
    data[offset] ^= 0x01
    with pytest.raises(StunError) as excinfo:
        parse_binding_request(bytes(data), rfc_lookup)
    assert excinfo.value.reason == reason


def test_rfc5769_request_with_refreshed_fingerprint_still_fails_integrity() -> None:
    # Changing the username and recomputing the CRC passes the codec, but
    # MESSAGE-INTEGRITY cannot be redone without the password.
    tampered = bytearray(RFC5769_REQUEST)
    tampered[69:73] = b"h6vZ"  # USERNAME value starts at 64: remote ufrag h6vY -> h6vZ
    body = bytes(tampered[:-8])
    fingerprint = stun.message_fingerprint(body)
    data = body + bytes.fromhex("80280004") + fingerprint.to_bytes(4, "big")
    assert stun.parse_message(data).attributes["USERNAME"] == "evtj:h6vZ"
    with pytest.raises(StunError) as excinfo:
        parse_binding_request(data, rfc_lookup)
    assert excinfo.value.reason == "stun_bad_integrity"


def test_rfc5769_request_truncated() -> None:
    for length in (0, 19, 20, 50, len(RFC5769_REQUEST) - 1):
        with pytest.raises(StunError) as excinfo:
            parse_binding_request(RFC5769_REQUEST[:length], rfc_lookup)
        assert excinfo.value.reason == "stun_malformed"


def test_browser_style_request_with_use_candidate() -> None:
    data = make_request(f"{LOCAL_UFRAG}:peerUfrag", use_candidate=True, priority=1853824767)
    request = parse_binding_request(data, our_lookup)
    assert request.local_ufrag == LOCAL_UFRAG
    assert request.remote_ufrag == "peerUfrag"
    assert request.use_candidate is True
    assert request.priority == 1853824767
    assert request.transaction_id == stun.parse_message(data).transaction_id


def test_request_without_priority() -> None:
    assert parse_binding_request(make_request(priority=None), our_lookup).priority is None


@pytest.mark.parametrize(("data", "reason"), [
    (make_request(pwd="not-our-password"), "stun_bad_integrity"),
    (make_request(pwd=None), "stun_bad_integrity"),  # no MESSAGE-INTEGRITY at all
    (make_request(username="other:peer"), "stun_unknown_ufrag"),
    (make_request(username=None), "stun_no_username"),
    (make_request(username="nocolon"), "stun_no_username"),
    (make_request(fingerprint=False), "stun_no_fingerprint"),
    (make_request(message_class=stun.Class.INDICATION), "stun_indication"),
    (make_request(message_class=stun.Class.RESPONSE), "stun_not_request"),
    (make_request(message_class=stun.Class.ERROR), "stun_not_request"),
    (make_request(method=stun.Method.ALLOCATE), "stun_not_binding"),
], ids=["wrong pwd", "no integrity", "unknown ufrag", "no username", "username without colon",
        "no fingerprint", "indication", "response", "error response", "allocate"])
def test_dropped_requests_have_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(StunError) as excinfo:
        parse_binding_request(data, our_lookup)
    assert excinfo.value.reason == reason


# --- binding_success ------------------------------------------------------------------


@pytest.mark.parametrize("addr", [("192.0.2.1", 32853), ("203.0.113.7", 1), ("2001:db8::1", 65535)])
def test_binding_success_answers_the_check(addr: tuple[str, int]) -> None:
    request = parse_binding_request(make_request(use_candidate=True), our_lookup)
    data = binding_success(request, addr, LOCAL_PWD)
    assert is_stun(data)
    message = stun.parse_message(data)  # raises if the FINGERPRINT is wrong
    assert message.message_method == stun.Method.BINDING
    assert message.message_class == stun.Class.RESPONSE
    assert message.transaction_id == request.transaction_id
    assert message.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert message.check_message_integrity(LOCAL_PWD.encode())
    assert not message.check_message_integrity(b"someone-else's-password")
    assert "FINGERPRINT" in message.attributes
    assert list(message.attributes)[-2:] == ["MESSAGE-INTEGRITY", "FINGERPRINT"]


def test_binding_success_to_rfc5769_request_keeps_transaction_id() -> None:
    request = parse_binding_request(RFC5769_REQUEST, rfc_lookup)
    data = binding_success(request, ("192.0.2.1", 32853), RFC5769_PASSWORD)
    message = stun.parse_message(data)
    assert message.transaction_id == RFC5769_TRANSACTION_ID
    assert message.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert message.check_message_integrity(RFC5769_PASSWORD.encode())
    # The address travels XOR-ed with the cookie (RFC 8489 §14.2), never in clear.
    assert bytes([192, 0, 2, 1]) not in data


# --- robustness -----------------------------------------------------------------------


def _only_stun_errors(data: bytes) -> None:
    try:
        parse_binding_request(data, our_lookup)
    except StunError as exc:
        assert exc.reason.startswith("stun_")
    else:
        raise AssertionError(f"accepted {data.hex()}")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_datagrams_raise_stun_error_only(data: bytes) -> None:
    _only_stun_errors(data)


BROWSER_REQUEST = make_request(use_candidate=True)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([RFC5769_REQUEST, BROWSER_REQUEST]), st.data())
def test_damaged_requests_are_dropped_or_unchanged(valid: bytes, draw: st.DataObject) -> None:
    original = parse_binding_request(valid, lambda ufrag: rfc_lookup(ufrag) or our_lookup(ufrag))
    data = bytearray(valid)
    cut = draw.draw(st.integers(0, len(data)))
    if cut < len(data):
        del data[cut:]
    else:
        i = draw.draw(st.integers(0, len(data) - 1))
        data[i] ^= draw.draw(st.integers(1, 255))
    try:
        request = parse_binding_request(bytes(data), lambda ufrag: rfc_lookup(ufrag) or our_lookup(ufrag))
    except StunError as exc:
        assert exc.reason.startswith("stun_")
    else:
        # aioice tolerates some damage outside what MESSAGE-INTEGRITY covers
        # (e.g. a FINGERPRINT length running past the end); whatever it lets
        # through must still be the very request that was signed.
        assert cut == len(valid)
        assert request == original


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.integers(0, 0x3FFF))
def test_stun_shaped_garbage_raises_stun_error_only(body: bytes, message_type: int) -> None:
    # A correct header (type, length, cookie) in front of random attributes.
    header = message_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12)
    _only_stun_errors(header + body)
