"""The fast path as Python code sees it: the compiled module, or its twin.

``SFU_PURE_PYTHON=1`` selects the pure-Python reference, so the same server
and benchmarks can run either way.
"""

from __future__ import annotations

import os

if os.environ.get("SFU_PURE_PYTHON") == "1":
    from .fastpath_reference import (  # noqa: F401
        CODEC_H264, CODEC_OPUS, CODEC_OTHER, CODEC_VP8, ExtIds, RtpError, RtpInfo,
        is_keyframe, parse_rtp, rewrite_rtp, unwrap_rtx, wrap_rtx,
    )
    IMPLEMENTATION = "python"
else:
    from ._fastpath import (  # noqa: F401
        CODEC_H264, CODEC_OPUS, CODEC_OTHER, CODEC_VP8, ExtIds, RtpError, RtpInfo,
        is_keyframe, parse_rtp, rewrite_rtp, unwrap_rtx, wrap_rtx,
    )
    IMPLEMENTATION = "cython"
