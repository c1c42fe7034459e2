"""The side recorder: every published track of a room muxed to files for replay.

A separate process (``sfu record``, or started by ``sfu serve --recordings DIR``)
is an ordinary consumer of the shards: it receives plain RTP over loopback,
reorders it (``jitter_buffer``), rebuilds frames (``depacketizer``) and muxes
them without re-encoding (``muxer``) into Matroska/WebM files written so a crash
leaves a playable file. ``catalog`` lists what was recorded.
"""
