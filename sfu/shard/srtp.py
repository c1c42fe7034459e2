"""SRTP/SRTCP sessions from DTLS-exported keys, through libsrtp (pylibsrtp's OpenSSL build)."""

from __future__ import annotations

from pylibsrtp import Policy, Session

from .dtls import SrtpKeys

_LIBSRTP_PROFILE = {
    "SRTP_AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "SRTP_AES128_CM_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}

# libsrtp's default 128-packet replay window rejects the late retransmissions a
# publisher sends after our NACKs; 1024 covers ~1 s of a 10 Mbit/s stream. Only
# the inbound side gets it: on the outbound side the window is pure cost (its
# bit-vector shift showed up at 1.4 % of a loaded shard's profile).
REPLAY_WINDOW = 1024


class SrtpSession:
    """The pair of libsrtp sessions of one transport: inbound (peer's key), outbound (ours).

    The engine calls libsrtp on their contexts directly; the Python methods serve
    tests and test peers.
    """

    def __init__(self, keys: SrtpKeys) -> None:
        profile = _LIBSRTP_PROFILE[keys.profile.name]
        rx = Policy(key=keys.remote, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        rx.window_size = REPLAY_WINDOW
        tx = Policy(key=keys.local, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        # Without RTX a NACK is answered by resending the same sequence number.
        tx.allow_repeat_tx = True
        self.profile = keys.profile.name
        self.rx = Session(rx)
        self.tx = Session(tx)
        self.protect = self.tx.protect
        self.protect_rtcp = self.tx.protect_rtcp
        self.unprotect = self.rx.unprotect
        self.unprotect_rtcp = self.rx.unprotect_rtcp
