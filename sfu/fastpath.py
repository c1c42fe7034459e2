"""The fast path as Python code sees it: the compiled module, or its twin.

``SFU_PURE_PYTHON=1`` selects the pure-Python reference, so the same server
and benchmarks can run either way.
"""

from __future__ import annotations

import os

from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

if os.environ.get("SFU_PURE_PYTHON") == "1":
    from .fastpath_reference import (  # noqa: F401
        CODEC_H264, CODEC_OPUS, CODEC_OTHER, CODEC_VP8, DROP_REASONS, Engine, ExtIds, RtpError,
        RtpInfo, is_keyframe, parse_rtp, rewrite_rtp, unwrap_rtx, wrap_rtx,
    )
    IMPLEMENTATION = "python"
else:
    from ._fastpath import (  # noqa: F401
        CODEC_H264, CODEC_OPUS, CODEC_OTHER, CODEC_VP8, DROP_REASONS, Engine, ExtIds, RtpError,
        RtpInfo, configure_srtp, is_keyframe, parse_rtp, rewrite_rtp, unwrap_rtx, wrap_rtx,
    )
    IMPLEMENTATION = "cython"

    # The engine calls the same OpenSSL-backed libsrtp that pylibsrtp wraps, by address.
    configure_srtp(*(
        int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, name)))
        for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp")
    ))
