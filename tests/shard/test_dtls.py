"""DTLS-SRTP as a protocol core: two endpoints wired in memory, no socket, no event loop."""

from __future__ import annotations

import os
import time
from typing import Callable

import pylibsrtp
import pytest
from cryptography.hazmat.primitives import hashes

from fixtures import make_rtcp_rr, make_rtp

from sfu.shard.dtls import DtlsCertificate, DtlsEndpoint, DtlsError
from sfu.shard.srtp import SrtpSession

GCM = "SRTP_AEAD_AES_128_GCM"
SHA1_80 = "SRTP_AES128_CM_SHA1_80"


@pytest.fixture(scope="module")
def client_cert() -> DtlsCertificate:
    return DtlsCertificate.generate()


@pytest.fixture(scope="module")
def server_cert() -> DtlsCertificate:
    return DtlsCertificate.generate()


def make_pair(client_cert: DtlsCertificate, server_cert: DtlsCertificate, *,
              client_expects: str | None = None, server_expects: str | None = None,
              client_profiles: bytes | None = None) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    context = None
    if client_profiles is not None:
        context = client_cert.context()
        context.set_tlsext_use_srtp(client_profiles)
    client = DtlsEndpoint(client_cert, "client",
                          ("sha-256", client_expects or server_cert.fingerprint_sha256), context=context)
    server = DtlsEndpoint(server_cert, "server", ("sha-256", server_expects or client_cert.fingerprint_sha256))
    return client, server


class Wire:
    """Carries each endpoint's output to the other, dropping the flights ``drop`` picks.

    A flight is the list of datagrams one call returned; flights are numbered in
    the order they are put on the wire, from 0.
    """

    def __init__(self, client: DtlsEndpoint, server: DtlsEndpoint,
                 drop: Callable[[int], bool] = lambda flight: False) -> None:
        self.client, self.server = client, server
        self.drop = drop
        self.flights = 0
        self.dropped: list[list[bytes]] = []
        self.timeouts_handled = 0

    def send(self, datagrams: list[bytes], to: DtlsEndpoint) -> list[tuple[bytes, DtlsEndpoint]]:
        if not datagrams:
            return []
        flight, self.flights = self.flights, self.flights + 1
        if self.drop(flight):
            self.dropped.append(datagrams)
            return []
        return [(d, to) for d in datagrams]

    def run(self, first: list[bytes], max_wait_s: float = 10.0) -> None:
        """Deliver until both ends are done, retransmitting on their timers."""
        queue = self.send(first, self.server)
        deadline = time.monotonic() + max_wait_s
        while True:
            while queue:
                data, to = queue.pop(0)
                other = self.server if to is self.client else self.client
                queue += self.send(to.receive(data), other)
            if {self.client.state, self.server.state} <= {"connected", "failed", "closed"}:
                return
            timers = [t for t in (self.client.next_timeout_s(), self.server.next_timeout_s()) if t is not None]
            assert timers, "handshake stalled with no retransmission timer"
            assert time.monotonic() < deadline, "handshake did not complete"
            # Sleep until the earliest timer is due: OpenSSL reads the real clock.
            time.sleep(max(min(timers), 0.0) + 0.005)
            for endpoint, other in ((self.client, self.server), (self.server, self.client)):
                timeout = endpoint.next_timeout_s()
                if timeout is not None and timeout <= 0.0:
                    self.timeouts_handled += 1
                    queue += self.send(endpoint.handle_timeout(), other)


def handshake(client: DtlsEndpoint, server: DtlsEndpoint) -> Wire:
    wire = Wire(client, server)
    assert server.start() == []  # a server waits for the ClientHello
    wire.run(client.start())
    return wire


# --- handshake ------------------------------------------------------------------------


def test_handshake_negotiates_dtls12_and_gcm(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    assert (client.state, server.state) == ("new", "new")
    wire = handshake(client, server)
    assert (client.state, server.state) == ("connected", "connected")
    assert (client.error, server.error) == (None, None)
    assert wire.timeouts_handled == 0
    # Private access: the endpoint keeps the version to itself, and this is the one thing asked.
    assert client._ssl.get_protocol_version_name() == "DTLSv1.2"
    assert server._ssl.get_protocol_version_name() == "DTLSv1.2"
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.profile.name == server.srtp_keys.profile.name == GCM


def test_exported_keys_mirror(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    handshake(client, server)
    c, s = client.srtp_keys, server.srtp_keys
    assert c.local == s.remote
    assert c.remote == s.local
    assert c.local != c.remote
    assert len(c.local) == len(c.remote) == 16 + 12  # AES-128 key + GCM 96-bit salt


def test_server_prefers_gcm_whatever_the_client_order(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert,
                               client_profiles=f"{SHA1_80}:{GCM}".encode())
    handshake(client, server)
    assert server.srtp_keys.profile.name == client.srtp_keys.profile.name == GCM


def test_sha1_80_when_the_peer_has_nothing_else(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert, client_profiles=SHA1_80.encode())
    handshake(client, server)
    assert server.srtp_keys.profile.name == SHA1_80
    assert client.srtp_keys.local == server.srtp_keys.remote
    assert len(client.srtp_keys.local) == 16 + 14


def test_no_common_srtp_profile_fails(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert, client_profiles=b"SRTP_AES128_CM_SHA1_32")
    handshake(client, server)
    assert server.state == "failed"
    assert server.error == "no SRTP profile negotiated"
    assert server.srtp_keys is None


def test_lowercase_sdp_fingerprint_is_accepted(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert,
                               server_expects=client_cert.fingerprint_sha256.lower())
    handshake(client, server)
    assert server.state == "connected"


@pytest.mark.parametrize("algorithm", ["sha-1", "sha-384", "sha-512"])
def test_other_fingerprint_algorithms(client_cert, server_cert, algorithm: str) -> None:
    digest = {"sha-1": hashes.SHA1, "sha-384": hashes.SHA384, "sha-512": hashes.SHA512}[algorithm]()
    expected = ":".join(f"{b:02x}" for b in client_cert.cert.fingerprint(digest))
    client = DtlsEndpoint(client_cert, "client", ("sha-256", server_cert.fingerprint_sha256))
    server = DtlsEndpoint(server_cert, "server", (algorithm, expected))
    handshake(client, server)
    assert server.state == "connected"


def test_certificate_fingerprint_format(client_cert) -> None:
    fp = client_cert.fingerprint_sha256
    parts = fp.split(":")
    assert len(parts) == 32
    assert all(len(p) == 2 and p == p.upper() and int(p, 16) >= 0 for p in parts)
    assert bytes.fromhex(fp.replace(":", "")) == client_cert.cert.fingerprint(hashes.SHA256())


def test_bad_arguments() -> None:
    cert = DtlsCertificate.generate()
    with pytest.raises(ValueError):
        DtlsEndpoint(cert, "peer", ("sha-256", cert.fingerprint_sha256))
    with pytest.raises(DtlsError):
        DtlsEndpoint(cert, "client", ("md5", "00"))


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
def test_wrong_remote_fingerprint_fails(client_cert, server_cert, side: str) -> None:
    wrong = DtlsCertificate.generate().fingerprint_sha256
    if side == "client":
        client, server = make_pair(client_cert, server_cert, client_expects=wrong)
        checker = client
    else:
        client, server = make_pair(client_cert, server_cert, server_expects=wrong)
        checker = server
    handshake(client, server)
    assert checker.state == "failed"
    assert checker.error == "peer certificate does not match the SDP fingerprint"
    assert checker.srtp_keys is None
    # A failed endpoint is inert.
    assert checker.receive(b"\x16\xfe\xfd" + bytes(30)) == []
    assert checker.handle_timeout() == []
    assert checker.next_timeout_s() is None
    assert checker.state == "failed"


def test_garbage_into_a_connecting_endpoint(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    client_hello = client.start()
    garbage = [os.urandom(n) for n in (1, 13, 100, 1200)] + [b"\x17\xfe\xfd" + bytes(10), b"\xff" * 64]
    for data in garbage:
        assert client.receive(data) == []
        assert server.receive(data) == []
    assert (client.state, server.state) == ("connecting", "connecting")
    # And the handshake is not disturbed.
    Wire(client, server).run(client_hello)
    assert (client.state, server.state) == ("connected", "connected")


def test_malformed_handshake_record_fails_without_raising(client_cert, server_cert) -> None:
    # A well-formed DTLS record around a nonsense handshake message: OpenSSL
    # gives up on the handshake (a decode error is fatal); the endpoint must
    # report it, not throw.
    client, server = make_pair(client_cert, server_cert)
    client.start()
    record = b"\x16\xfe\xfd" + bytes(8) + (20).to_bytes(2, "big") + b"\x01" + b"\xff" * 19
    server.receive(record)
    assert server.state in ("connecting", "failed")
    if server.state == "failed":
        assert server.error.startswith("handshake failed")


# --- retransmission -------------------------------------------------------------------


@pytest.mark.parametrize(("lost", "description"), [
    (0, "ClientHello"),
    (1, "server's first flight"),
])
def test_lost_flight_is_recovered_by_handle_timeout(client_cert, server_cert, lost: int, description: str) -> None:
    client, server = make_pair(client_cert, server_cert)
    wire = Wire(client, server, drop=lambda flight: flight == lost)
    client_hello = client.start()
    assert client.next_timeout_s() is not None
    assert 0 < client.next_timeout_s() <= 1.0  # RFC 6347 §4.2.4.1: 1 s initial timer
    assert server.next_timeout_s() is None  # not connecting yet: nothing to resend
    wire.run(client_hello)
    assert len(wire.dropped) == 1, description
    assert wire.timeouts_handled >= 1
    assert (client.state, server.state) == ("connected", "connected")
    assert client.srtp_keys.local == server.srtp_keys.remote


def test_handle_timeout_before_the_timer_sends_nothing(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    client.start()
    assert client.handle_timeout() == []
    assert client.state == "connecting"


def test_no_timer_outside_the_handshake(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    assert client.next_timeout_s() is None
    assert client.handle_timeout() == []
    handshake(client, server)
    assert client.next_timeout_s() is None
    assert server.next_timeout_s() is None
    assert client.handle_timeout() == []


# --- close ----------------------------------------------------------------------------


def test_close_notify_closes_the_peer(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    handshake(client, server)
    alerts = client.close()
    assert client.state == "closed"
    assert alerts and alerts[0][0] == 21  # an alert record
    for data in alerts:
        assert server.receive(data) == []
    assert server.state == "closed"
    assert client.receive(b"\x17\xfe\xfd" + bytes(30)) == []


# --- SRTP -----------------------------------------------------------------------------


@pytest.mark.parametrize("profiles", [None, SHA1_80.encode()], ids=["gcm", "sha1_80"])
def test_srtp_round_trip_both_ways(client_cert, server_cert, profiles: bytes | None) -> None:
    client, server = make_pair(client_cert, server_cert, client_profiles=profiles)
    handshake(client, server)
    publisher, sfu = SrtpSession(client.srtp_keys), SrtpSession(server.srtp_keys)
    assert publisher.profile == sfu.profile == server.srtp_keys.profile.name

    for sender, receiver in ((publisher, sfu), (sfu, publisher)):
        for seq in range(3):
            rtp = make_rtp(seq=seq, ts=seq * 3000, ssrc=0x1234, extensions={4: b"0"}, payload=b"media" * 20)
            protected = sender.protect(rtp)
            assert protected[:12] == rtp[:12]  # the header stays in clear
            assert b"media" * 20 not in protected
            assert receiver.unprotect(protected) == rtp
        rtcp = make_rtcp_rr(ssrc=0x5678)
        protected = sender.protect_rtcp(rtcp)
        assert protected != rtcp
        assert receiver.unprotect_rtcp(protected) == rtcp


def test_srtp_rejects_tampering_and_wrong_direction(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    handshake(client, server)
    publisher, sfu = SrtpSession(client.srtp_keys), SrtpSession(server.srtp_keys)
    protected = bytearray(publisher.protect(make_rtp(seq=1, payload=b"media")))
    protected[-1] ^= 1
    with pytest.raises(pylibsrtp.Error):
        sfu.unprotect(bytes(protected))
    # Our own outbound packet is not decryptable with the peer's key.
    with pytest.raises(pylibsrtp.Error):
        sfu.unprotect(sfu.protect(make_rtp(seq=2, payload=b"media")))


def test_srtp_accepts_late_retransmission_within_window(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    handshake(client, server)
    publisher, sfu = SrtpSession(client.srtp_keys), SrtpSession(server.srtp_keys)
    late = publisher.protect(make_rtp(seq=0, payload=b"first"))
    for seq in range(1, 600):
        sfu.unprotect(publisher.protect(make_rtp(seq=seq, payload=b"x")))
    # 599 packets behind: outside libsrtp's default 128 window, inside ours.
    assert sfu.unprotect(late) == make_rtp(seq=0, payload=b"first")
    with pytest.raises(pylibsrtp.Error):
        sfu.unprotect(late)  # but a replay is still a replay


def test_released_endpoint_keeps_keys_and_notices_close(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    handshake(client, server)
    keys = server.srtp_keys
    server.release()
    assert server.state == "connected" and server.srtp_keys == keys
    # Handshake-looking records are ignored now; an alert record means the peer closed.
    assert server.receive(bytes([22, 0xFE, 0xFD]) + bytes(11)) == []
    assert server.state == "connected"
    alert = client.close()
    assert alert and alert[0][0] == 21
    assert server.receive(alert[0]) == []
    assert server.state == "closed"
    assert server.close() == []


def test_release_before_connected_does_nothing(client_cert, server_cert) -> None:
    client, server = make_pair(client_cert, server_cert)
    server.release()
    wire = handshake(client, server)
    assert server.state == "connected" and wire.timeouts_handled == 0
