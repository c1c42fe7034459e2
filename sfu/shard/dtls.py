"""DTLS 1.2 handshake and DTLS-SRTP key export (RFC 5764), as a protocol core.

OpenSSL (through pyOpenSSL) does the cryptography; this class only moves bytes
between the datagram socket and OpenSSL's memory BIOs, so it can be driven with
no socket and no event loop in tests.
"""

from __future__ import annotations

import datetime
import hmac
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

DTLS1_2_VERSION = 0xFEFD  # OpenSSL >= 3.5 may otherwise negotiate DTLS 1.3


@dataclass(frozen=True)
class SrtpProfile:
    name: str  # as in RFC 5764 / OpenSSL
    key_length: int
    salt_length: int


# Order is our preference: GCM is both faster and authenticates the header.
SRTP_PROFILES = (
    SrtpProfile("SRTP_AEAD_AES_128_GCM", 16, 12),
    SrtpProfile("SRTP_AES128_CM_SHA1_80", 16, 14),
)
_HASHES = {"sha-1": hashes.SHA1, "sha-256": hashes.SHA256, "sha-384": hashes.SHA384, "sha-512": hashes.SHA512}


def _fingerprint(cert: x509.Certificate, algorithm: str) -> str:
    digest = cert.fingerprint(_HASHES[algorithm]())
    return ":".join(f"{b:02X}" for b in digest)


class DtlsCertificate:
    """One self-signed ECDSA certificate per shard; its fingerprint goes in every answer."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.fingerprint_sha256 = _fingerprint(cert, "sha-256")

    @classmethod
    def generate(cls) -> "DtlsCertificate":
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, os.urandom(8).hex())])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_max_proto_version(DTLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        # An established association holds no record buffers: tens of KiB per peer.
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        # Peers present self-signed certificates: trust comes from the SDP
        # fingerprint, checked after the handshake, not from a CA chain.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)
        ctx.set_cipher_list(b"HIGH:!CAMELLIA:!aNULL")
        ctx.set_tlsext_use_srtp(b":".join(p.name.encode() for p in SRTP_PROFILES))
        return ctx


@dataclass(frozen=True)
class SrtpKeys:
    profile: SrtpProfile
    local: bytes  # master key + salt we protect with
    remote: bytes  # master key + salt the peer protects with


class DtlsError(Exception):
    pass


class DtlsEndpoint:
    """One DTLS association. ``receive``/``handle_timeout`` return datagrams to send."""

    def __init__(
        self,
        certificate: DtlsCertificate,
        role: str,
        remote_fingerprint: tuple[str, str],
        context: SSL.Context | None = None,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"bad DTLS role {role!r}")
        if remote_fingerprint[0] not in _HASHES:
            raise DtlsError(f"unsupported fingerprint algorithm {remote_fingerprint[0]}")
        self.role = role
        self.remote_fingerprint = (remote_fingerprint[0], remote_fingerprint[1].upper())
        self.state = "new"
        self.srtp_keys: SrtpKeys | None = None
        self.error: str | None = None
        self._ssl: SSL.Connection | None = SSL.Connection(context or certificate.context(), None)
        if role == "server":
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()

    def start(self) -> list[bytes]:
        """Begin the handshake; a client sends its ClientHello now."""
        if self.state == "new":
            self.state = "connecting"
            if self.role == "client":
                return self._handshake()
        return []

    def receive(self, data: bytes) -> list[bytes]:
        if self.state in ("failed", "closed") or not data:
            return []
        if self._ssl is None:
            # Released after the handshake: an alert record (content type 21, plain
            # in the DTLS 1.2 record header) can only be the peer closing.
            if data[0] == 21:
                self.state = "closed"
            return []
        if self.state == "new":
            self.state = "connecting"
        try:
            self._ssl.bio_write(data)
        except SSL.Error:
            return self._fail("bio write failed")
        if self.state == "connecting":
            return self._handshake()
        # Established: drain application data (WebRTC data channels are out of
        # scope) and notice close_notify.
        try:
            self._ssl.recv(1500)
        except SSL.ZeroReturnError:
            self.state = "closed"
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass
        return self._flush()

    def release(self) -> None:
        """Drop OpenSSL's state once the peer has proven it finished the handshake.

        An established DTLS association costs ~70 KiB in OpenSSL; after the peer
        sends SRTP it will never need our handshake flight again, and WebRTC
        media carries no DTLS application data. Closing is still noticed.
        """
        if self.state == "connected":
            self._ssl = None

    def next_timeout_s(self) -> float | None:
        """Seconds until OpenSSL wants to retransmit a flight, or None."""
        if self.state != "connecting":
            return None
        return self._ssl.DTLSv1_get_timeout()

    def handle_timeout(self) -> list[bytes]:
        if self.state != "connecting":
            return []
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error:
            return self._fail("timeout handling failed")
        return self._flush()

    def close(self) -> list[bytes]:
        if self._ssl is None:
            self.state = "closed"
            return []
        if self.state == "connected":
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
        self.state = "closed"
        return self._flush()

    def _handshake(self) -> list[bytes]:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return self._flush()
        except SSL.Error as exc:
            out = self._flush()
            self._fail(f"handshake failed: {exc}")
            return out
        out = self._flush()
        try:
            self._check_fingerprint()
            self.srtp_keys = self._export_keys()
        except DtlsError as exc:
            self._fail(str(exc))
            return out
        self.state = "connected"
        return out

    def _check_fingerprint(self) -> None:
        peer = self._ssl.get_peer_certificate(as_cryptography=True)
        if peer is None:
            raise DtlsError("peer sent no certificate")
        algorithm, expected = self.remote_fingerprint
        if not hmac.compare_digest(_fingerprint(peer, algorithm), expected):
            raise DtlsError("peer certificate does not match the SDP fingerprint")

    def _export_keys(self) -> SrtpKeys:
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p.name.encode() == selected), None)
        if profile is None:
            raise DtlsError("no SRTP profile negotiated")
        k, s = profile.key_length, profile.salt_length
        material = self._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (k + s))
        client = material[:k] + material[2 * k : 2 * k + s]
        server = material[k : 2 * k] + material[2 * k + s :]
        if self.role == "client":
            return SrtpKeys(profile, local=client, remote=server)
        return SrtpKeys(profile, local=server, remote=client)

    def _flush(self) -> list[bytes]:
        out = []
        while True:
            try:
                data = self._ssl.bio_read(65536)
            except SSL.Error:
                break
            if not data:
                break
            out.append(data)
        return out

    def _fail(self, reason: str) -> list[bytes]:
        self.state = "failed"
        self.error = reason
        return []
