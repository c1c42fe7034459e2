"""Fuzz every Cython entry point against a build made with AddressSanitizer.

The test copies the package source to a temporary directory, builds
``sfu._fastpath`` there with ``SFU_SANITIZE=address`` (the working tree's
``.so`` is never touched), then runs this same file as a script in a
subprocess with libasan preloaded and ``PYTHONMALLOC=malloc``, so each Python
object is a separate malloc with redzones around it. There, hypothesis feeds
random, truncated and mutated RTP and RTCP to ``parse_rtp``, ``rewrite_rtp``,
``wrap_rtx``, ``unwrap_rtx``, ``is_keyframe`` and to an ``Engine`` through
``feed()`` (which copies each datagram into an exactly sized malloc), with
``tick()`` and ``send_receiver_reports()`` in between: RTP (RED audio among it, and
sequence numbers that jump past outages) and RTCP (report blocks echoing an SR). Any
read past a buffer aborts the subprocess with an AddressSanitizer report.

ASAN cannot see a one-byte overread of a ``bytes`` object (its trailing NUL is
inside the allocation), so the functions are also given each packet placed so
it ends exactly where a PROT_NONE page begins: one byte too far faults.

``test_harness_reports_overread`` proves the harness can fail: reads past a
malloc'd buffer, past a ``bytes`` object and past a guarded packet, all under
the same environment, must each be reported.

libasan comes with gcc on Debian (package ``libgcc-<gcc major>-dev``). A failure
prints the fuzz seed; ``SFU_FUZZ_SEED=<seed>`` replays the same examples.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ASAN_OPTIONS = "detect_leaks=0:abort_on_error=1"
BUILD_TIMEOUT_S = 120
FUZZ_TIMEOUT_S = 150
# Examples per hypothesis test in the subprocess (several thousand in all).
EXAMPLES = {"functions": 2500, "engine_media": 1200, "engine_rtcp": 800}


# =====================================================================================
# The pytest side: build, run, judge.
# =====================================================================================


def _gcc_major() -> str:
    try:
        return subprocess.run(["gcc", "-dumpversion"], capture_output=True, text=True,
                              check=True).stdout.strip().split(".")[0]
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("gcc is missing: apt-get install -y gcc libgcc-12-dev")


def _libasan() -> str:
    """Path of the libasan that gcc links against; fail with the package to install."""
    major = _gcc_major()
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.fail(f"libasan not found (gcc says {path!r}): apt-get install -y libgcc-{major}-dev")
    return os.path.realpath(path)


def _asan_env(libasan: str, pythonpath: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC")}
    env.update(LD_PRELOAD=libasan, ASAN_OPTIONS=ASAN_OPTIONS, PYTHONMALLOC="malloc",
               PYTHONDONTWRITEBYTECODE="1", SFU_PURE_PYTHON="0")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _asan_complaint(proc: subprocess.CompletedProcess[str]) -> str | None:
    """What is wrong with a run under ASAN, or None if it was clean."""
    if "AddressSanitizer" in proc.stderr:
        return "AddressSanitizer report"
    if proc.returncode != 0:
        return f"exit code {proc.returncode}"
    return None


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def libasan() -> str:
    return _libasan()


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory: pytest.TempPathFactory, libasan: str) -> Path:
    """A copy of the package with ``sfu._fastpath`` built under AddressSanitizer."""
    root = tmp_path_factory.mktemp("asan_build")
    shutil.copytree(REPO / "sfu", root / "sfu",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.html"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, root / name)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["SFU_SANITIZE"] = "address"
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, f"ASAN build failed:\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
    built = list((root / "sfu").glob("_fastpath*.so"))
    assert len(built) == 1, built
    assert b"__asan_report_load" in built[0].read_bytes(), "the extension was built without ASAN"
    return root


@pytest.mark.timeout(BUILD_TIMEOUT_S + FUZZ_TIMEOUT_S + 30)
def test_fastpath_fuzz_under_asan(asan_build: Path, libasan: str) -> None:
    proc = subprocess.run([sys.executable, __file__, "fuzz", str(asan_build)], cwd=asan_build,
                          env=_asan_env(libasan), capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S)
    seed_line = next((line for line in proc.stderr.splitlines() if line.startswith("fuzz seed")), "")
    assert "AddressSanitizer" not in proc.stderr, f"{seed_line}\n{_tail(proc.stderr, 120)}"
    assert proc.returncode == 0, f"{seed_line}\nexit code {proc.returncode}\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The fuzz really ran, against the sanitized copy, and reached the forwarding code.
    assert report["asan_in_process"] and report["module"].startswith(str(asan_build))
    assert sum(report["examples"].values()) >= 3000, report["examples"]
    totals = report["engine_totals"]
    for key in ("packets_in", "packets_out", "nacks_served", "keyframe_requests_received"):
        assert totals[key] > 0, (key, totals)
    # ... including RED (malformed too), closed gaps and round trips from receiver reports.
    for reason in ("red_malformed", "late_before_switch", "waiting_for_keyframe"):
        assert report["drops"][reason] > 0, (reason, report["drops"])
    assert report["round_trips"] > 0


OVERREAD_C = r"""
#include <stdlib.h>
int overread_malloc(int n) { char *p = malloc(n); for (int i = 0; i < n; i++) p[i] = (char)i;
                             volatile int v = p[n]; free(p); return v; }
int peek(const unsigned char *p, long i) { volatile int v = p[i]; return v; }
"""

CANARIES = {
    # A read one byte past a malloc'd buffer (as feed() hands the engine).
    "malloc": "lib.overread_malloc(24)",
    # A read past a Python bytes object: only seen because PYTHONMALLOC=malloc.
    "bytes": "data = bytes(range(20)); lib.peek(data, len(data) + 1)",
    # A read one byte past a packet the fuzz places against a PROT_NONE page.
    "guarded": "import test_fastpath_asan as t; view = t.GuardedBuffer().place(b'x' * 20); "
               "t.read_byte(view, len(view))",
}


@pytest.mark.parametrize("canary", list(CANARIES))
def test_harness_reports_overread(canary: str, tmp_path: Path, libasan: str) -> None:
    """The same environment and the same judgement catch a real overread."""
    source = tmp_path / "overread.c"
    source.write_text(OVERREAD_C)
    lib = tmp_path / "liboverread.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address", "-o", str(lib), str(source)],
                   check=True, capture_output=True, timeout=60)
    code = f"import ctypes; lib = ctypes.CDLL({str(lib)!r}); {CANARIES[canary]}; print('not caught')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_asan_env(libasan, Path(__file__).parent),
                          capture_output=True, text=True, timeout=60)
    assert _asan_complaint(proc) == "AddressSanitizer report", (proc.returncode, proc.stdout, _tail(proc.stderr))
    assert "not caught" not in proc.stdout
    expected = "SEGV" if canary == "guarded" else "heap-buffer-overflow"
    assert expected in proc.stderr, _tail(proc.stderr)


# =====================================================================================
# The subprocess side: ``python tests/test_fastpath_asan.py fuzz BUILD_DIR``.
# =====================================================================================


class GuardedBuffer:
    """Packets placed to end exactly where a PROT_NONE page starts."""

    def __init__(self, capacity: int = 16384) -> None:
        page = mmap.PAGESIZE
        self.capacity = -(-capacity // page) * page
        self._map = mmap.mmap(-1, self.capacity + page)
        self._anchor = ctypes.c_char.from_buffer(self._map)  # keeps the address valid
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.mprotect(ctypes.addressof(self._anchor) + self.capacity, page, 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")
        self._view = memoryview(self._map)

    def place(self, data: bytes) -> memoryview:
        n = len(data)
        if n > self.capacity:
            raise ValueError("packet larger than the guarded buffer")
        start = self.capacity - n
        self._view[start:self.capacity] = data
        return self._view[start:self.capacity]


def read_byte(view: memoryview, index: int) -> int:
    """A raw read with no bounds check (for the canary)."""
    base = ctypes.addressof(ctypes.c_char.from_buffer(view))
    return ctypes.c_ubyte.from_address(base + index).value


def _fuzz(build_dir: str) -> None:  # noqa: C901 - one self-contained script
    sys.path.insert(0, build_dir)
    import sfu._fastpath as cy  # noqa: E402
    import sfu.fastpath as facade  # noqa: E402  (configure_srtp with libsrtp's addresses)
    from hypothesis import HealthCheck, example, given, seed, settings  # noqa: E402
    from hypothesis import strategies as st  # noqa: E402

    from fixtures import make_h264_payload, make_red_payload, make_rtp, make_vp8_payload  # noqa: E402

    # --- prove the sanitizer is live and this is the sanitized copy ---------------------
    with open("/proc/self/maps") as maps:
        asan_in_process = any("libasan" in line for line in maps)
    module = os.path.realpath(cy.__file__)
    assert asan_in_process, "libasan is not loaded in this process"
    assert module.startswith(os.path.realpath(build_dir)), module
    assert facade.IMPLEMENTATION == "cython" and facade.Engine is cy.Engine
    assert b"__asan_report_load" in Path(module).read_bytes()

    # ASAN aborts the process, so hypothesis cannot shrink or print the example:
    # the seed (and the ASAN stack) is what reproduces a failure.
    fuzz_seed = int(os.environ.get("SFU_FUZZ_SEED") or random.getrandbits(32))
    print(f"fuzz seed {fuzz_seed}: rerun with SFU_FUZZ_SEED={fuzz_seed}", file=sys.stderr, flush=True)

    def fuzz_settings(n: int):
        def apply(test):
            return seed(fuzz_seed)(settings(max_examples=n, deadline=None, database=None, print_blob=True,
                                             suppress_health_check=list(HealthCheck))(test))
        return apply

    counts = {name: 0 for name in EXAMPLES}
    guard, short_guard = GuardedBuffer(), GuardedBuffer()
    ALL_SSRCS = _all_ssrcs()

    # --- packets -----------------------------------------------------------------------

    u16 = st.integers(0, 0xFFFF)
    u32 = st.integers(0, 0xFFFFFFFF)

    @st.composite
    def payloads(draw, kind: str | None = None) -> bytes:
        kind = kind or draw(st.sampled_from(["vp8", "h264", "raw"]))
        if kind == "red":  # RFC 2198 around Opus; block lengths may lie (10 bits: up to 1023)
            blocks = draw(st.lists(st.tuples(st.sampled_from([111, 111, 13, 127]), st.integers(0, 0x3FFF),
                                             st.binary(max_size=16)), max_size=3))
            red = bytearray(make_red_payload(draw(st.sampled_from([111, 111, 0])), draw(st.binary(max_size=24)),
                                             blocks))
            if blocks and draw(st.booleans()):
                red[4 * draw(st.integers(0, len(blocks) - 1)) + 3] = draw(st.integers(0, 255))
            return bytes(red)
        if kind == "vp8":
            return make_vp8_payload(
                keyframe=draw(st.booleans()), start=draw(st.sampled_from([True, True, False])),
                partition=draw(st.sampled_from([0, 0, 0, 1, 7])),
                picture_id=draw(st.none() | st.integers(0, 0x7FFF)), tl0picidx=draw(st.none() | st.integers(0, 255)),
                tid=draw(st.none() | st.integers(0, 3)), keyidx=draw(st.none() | st.integers(0, 31)),
                frame=draw(st.binary(max_size=24)))
        if kind == "h264":
            shape = draw(st.sampled_from(["single", "stap", "fu"]))
            if shape == "stap":
                return make_h264_payload(stap_a=draw(st.lists(st.integers(0, 31), max_size=4)),
                                         body=draw(st.binary(max_size=8)))
            if shape == "fu":
                return make_h264_payload(fu_a=draw(st.integers(0, 31)), fu_start=draw(st.booleans()),
                                         body=draw(st.binary(max_size=8)))
            return make_h264_payload(draw(st.integers(0, 31)), body=draw(st.binary(max_size=8)))
        return draw(st.binary(max_size=48))

    one_byte_ext = st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=4)
    two_byte_ext = st.dictionaries(st.integers(1, 255), st.binary(max_size=20), max_size=4)

    @st.composite
    def rtp_seeds(draw, ssrcs=u32, pts=st.integers(0, 127), seqs=u16, mids=st.binary(min_size=1, max_size=16),
                  kind: str | None = None, big: int = 0) -> bytes:
        ext_kind = draw(st.sampled_from(["none", "one", "two", "raw", "mid", "mid"]))
        kw: dict = {}
        if ext_kind == "one":
            kw["extensions"] = draw(one_byte_ext)
        elif ext_kind == "two":
            kw["extensions"], kw["two_byte"] = draw(two_byte_ext), True
        elif ext_kind == "raw":
            kw["extension_profile"] = draw(u16)
            kw["extension_body"] = draw(st.binary(max_size=8).map(lambda b: b + bytes(-len(b) % 4)))
        elif ext_kind == "mid":
            kw["extensions"] = {MID_ID: draw(mids), ABS_ID: draw(st.binary(min_size=3, max_size=3)),
                                LEVEL_ID: draw(st.binary(min_size=1, max_size=1))}
        payload = draw(payloads(kind)) + bytes(big)
        return make_rtp(seq=draw(seqs), ts=draw(u32), ssrc=draw(ssrcs), pt=draw(pts), marker=draw(st.booleans()),
                        payload=payload, csrcs=draw(st.lists(u32, max_size=3)),
                        padding=draw(st.sampled_from([0, 0, 0, 1, 4, 255])), **kw)

    @st.composite
    def mutate(draw, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3]))):
            op = draw(st.integers(0, 5))
            at = draw(st.integers(0, max(len(buf), 1) - 1)) if buf else 0
            if op == 0:
                del buf[draw(st.integers(0, len(buf))):]                       # truncate
            elif op == 1 and buf:
                buf[at] ^= 1 << draw(st.integers(0, 7))                         # flip a bit
            elif op == 2 and buf:
                buf[at] = draw(st.integers(0, 255))                              # set a byte
            elif op == 3:
                buf[at:at] = draw(st.binary(min_size=1, max_size=8))             # insert
            elif op == 4 and buf:
                del buf[at:at + draw(st.integers(1, 8))]                         # delete
            elif op == 5 and len(buf) >= 2:
                struct.pack_into("!H", buf, min(at, len(buf) - 2), draw(u16))   # a length field
        return bytes(buf)

    def mutated(seeds):
        return seeds.flatmap(mutate)

    any_packet = st.one_of(mutated(rtp_seeds()), st.binary(max_size=64),
                           st.binary(max_size=40).map(lambda b: b"\x80" + b),
                           st.binary(max_size=40).map(lambda b: b"\x90" + b))

    # --- 1. the functions ----------------------------------------------------------------

    ext_ids = st.builds(cy.ExtIds, mid=st.integers(0, 255), rid=st.integers(0, 255),
                        repaired_rid=st.integers(0, 255), abs_send_time=st.integers(0, 255),
                        audio_level=st.integers(0, 255))
    small_ids = st.builds(cy.ExtIds, mid=st.integers(0, 15), abs_send_time=st.integers(0, 15),
                          audio_level=st.integers(0, 15))

    @fuzz_settings(EXAMPLES["functions"])
    @given(data=any_packet, ids=ext_ids, out_ids=small_ids, pt=st.integers(0, 127), seq=u16, ts=u32, ssrc=u32,
           mid=st.binary(max_size=20), offset=st.integers(-4, 2000), codec=st.integers(-1, 4))
    def fuzz_functions(data, ids, out_ids, pt, seq, ts, ssrc, mid, offset, codec) -> None:
        counts["functions"] += 1
        for buf in (data, guard.place(data)):
            try:
                info = cy.parse_rtp(buf, ids)
            except cy.RtpError:
                info = None
            try:
                cy.wrap_rtx(buf, offset, pt, seq, ssrc)
            except cy.RtpError:
                pass
            if info is None:
                continue
            cy.rewrite_rtp(buf, info, pt, seq, ts, ssrc, out_ids, mid)
            cy.wrap_rtx(buf, info.payload_offset, pt, seq, ssrc)
            try:
                cy.unwrap_rtx(buf, info, pt, ssrc)
            except cy.RtpError:
                pass
            for c in (codec, cy.CODEC_VP8, cy.CODEC_H264):
                cy.is_keyframe(c, buf, info)
            # The same packet seen through a shorter buffer than it was parsed from.
            short = short_guard.place(bytes(buf[:len(buf) // 2]))
            for call in (lambda: cy.rewrite_rtp(short, info, pt, seq, ts, ssrc, out_ids, mid),
                         lambda: cy.unwrap_rtx(short, info, pt, ssrc),
                         lambda: cy.wrap_rtx(short, info.payload_offset, pt, seq, ssrc)):
                try:
                    call()
                except cy.RtpError:
                    pass
            cy.is_keyframe(cy.CODEC_VP8, short, info)
            cy.is_keyframe(cy.CODEC_H264, short, info)

    # --- 2. the engine -------------------------------------------------------------------

    world = World(cy, pacer=True, keyframe_min_interval_s=0.02)
    quiet_world = World(cy, pacer=False, keyframe_min_interval_s=0.5)

    # (ssrc, payload type, payload kind) of the publisher's streams, and some that are not.
    streams = st.sampled_from([(VP8_SSRC, 96, "vp8"), (VP8_SSRC, 96, "vp8"), (VP8_RTX_SSRC, 97, "vp8"),
                               (H264_SSRC, 102, "h264"), (H264_RTX_SSRC, 103, "h264"), (OPUS_SSRC, 111, "raw"),
                               (OPUS_SSRC, OPUS_RED_PT, "red"), (OPUS_SSRC, OPUS_RED_PT, "red")])
    odd_streams = st.tuples(st.sampled_from([VP8_SSRC, VP8_RTX_SSRC, OPUS_SSRC, H264_SSRC, H264_RTX_SSRC]) | u32,
                            st.sampled_from([96, 97, 102, 103, 111, OPUS_RED_PT]) | st.integers(0, 127), st.none())
    # Mostly in order near a base; now and then after an outage (more than 64 missing) or before one.
    seqs = st.builds(lambda base, d: (base + d) & 0xFFFF, st.sampled_from([100, 65530]),
                     st.integers(0, 60) | st.integers(-400, 600))
    mids = st.sampled_from([b"0", b"0", b"1", b"1", b"2", b"zz"])
    sizes = st.sampled_from([0] * 12 + [1100, 1750, 1780, 1790, 1900, 2100])  # around MAX_RTP and SLOT

    @st.composite
    def media(draw, seq=seqs) -> bytes:
        ssrc, pt, kind = draw(st.one_of(streams, streams, streams, odd_streams))
        data = draw(rtp_seeds(ssrcs=st.just(ssrc), pts=st.just(pt), seqs=seq, mids=mids, kind=kind,
                              big=draw(sizes)))
        if pt in (97, 103) and draw(st.integers(0, 3)):  # RTX: the original sequence number leads the payload
            off = cy.parse_rtp(data, cy.ExtIds()).payload_offset
            data = data[:off] + struct.pack("!H", draw(seqs)) + data[off:]
        return draw(mutate(data))

    @st.composite
    def burst(draw) -> tuple:
        """Many packets in a row with no tick: ring wrap-around, a full pacer queue, expired entries."""
        template = draw(media(seq=st.just(0)))
        return ("burst", draw(st.integers(1, 1500)), draw(u16), template)

    @st.composite
    def rtcp_part(draw) -> bytes:
        kind = draw(st.sampled_from(["sr", "rr", "nack", "pli", "fir", "remb", "sdes", "bye", "junk"]))
        sender = draw(ALL_SSRCS | u32)
        media_ssrc = draw(ALL_SSRCS | u32)
        count = draw(st.integers(0, 3))
        # LSR: mostly the middle of the SR the story sends (a round trip), DLSR any.
        blocks = b"".join(struct.pack("!IIIIII", draw(ALL_SSRCS | u32), *draw(st.tuples(u32, u32, u32)),
                                      draw(st.sampled_from([SR_MIDDLE, 0]) | u32), draw(st.sampled_from([0]) | u32))
                          for _ in range(count))
        if kind == "sr":
            fmt, pt, body = count, 200, struct.pack("!I", sender) + draw(st.binary(min_size=20, max_size=20)) + blocks
        elif kind == "rr":
            fmt, pt, body = count, 201, struct.pack("!I", sender) + blocks
        elif kind == "nack":
            fci = b"".join(struct.pack("!HH", draw(seqs), draw(u16)) for _ in range(draw(st.integers(0, 4))))
            fmt, pt, body = 1, 205, struct.pack("!II", sender, media_ssrc) + fci
        elif kind == "pli":
            fmt, pt, body = 1, 206, struct.pack("!II", sender, media_ssrc)
        elif kind == "fir":
            fci = b"".join(struct.pack("!II", draw(ALL_SSRCS | u32), draw(u32)) for _ in range(draw(st.integers(0, 3))))
            fmt, pt, body = 4, 206, struct.pack("!II", sender, 0) + fci
        elif kind == "remb":
            ssrcs = draw(st.lists(ALL_SSRCS, max_size=3))
            fmt, pt = 15, 206
            body = struct.pack("!II", sender, 0) + b"REMB" + struct.pack("!B", len(ssrcs)) + draw(
                st.binary(min_size=3, max_size=3)) + b"".join(struct.pack("!I", s) for s in ssrcs)
        elif kind == "sdes":
            fmt, pt, body = 1, 202, struct.pack("!I", sender) + draw(st.binary(max_size=12))
        elif kind == "bye":
            fmt, pt, body = 1, 203, struct.pack("!I", sender)
        else:
            fmt, pt, body = draw(st.integers(0, 31)), draw(st.integers(192, 223)), draw(st.binary(max_size=24))
        body += bytes(-len(body) % 4)
        length = len(body) // 4
        if draw(st.integers(0, 7)) == 0:
            length = draw(u16)  # a garbage length
        return struct.pack("!BBH", 0x80 | fmt, pt, length) + body

    rtcp = st.lists(rtcp_part(), min_size=1, max_size=3).map(b"".join).flatmap(mutate)
    sources = st.integers(0, 4)  # publisher, three viewers, a stranger
    transports = st.integers(-1, 4)
    operations = st.one_of(
        st.tuples(st.just("rtp"), st.just(0), media()),
        st.tuples(st.just("rtp"), st.just(0), media()),
        st.tuples(st.just("rtp"), sources, any_packet),
        st.tuples(st.just("rtcp"), sources, rtcp),
        st.tuples(st.just("nack_seen"), st.integers(0, 2), st.integers(0, 63), u16),
        st.tuples(st.just("feed"), sources, st.binary(max_size=40)),  # STUN/DTLS-like, empty, other
        st.tuples(st.just("tick")),
        st.tuples(st.just("reports"), transports, u32 | st.just(0)),
        st.tuples(st.just("send_rtcp"), transports, st.binary(max_size=64)),
        st.tuples(st.just("recycle_consumer"), st.integers(0, 2), st.integers(0, 2), u16),
        st.tuples(st.just("recycle_producer"), st.integers(0, 2)),
        burst(),
    )

    KEYFRAME = make_rtp(seq=100, ts=9000, ssrc=VP8_SSRC, pt=96, marker=True, payload=make_vp8_payload(True),
                        extensions={MID_ID: b"0", ABS_ID: b"\x01\x02\x03", LEVEL_ID: b"\x05"})
    H264_FIRST = make_rtp(seq=7, ts=1, ssrc=H264_SSRC, pt=102, payload=make_h264_payload(5),
                          extensions={MID_ID: b"1"})
    SR = struct.pack("!BBHI", 0x80, 200, 6, VP8_SSRC) + bytes(range(20))
    PLI = struct.pack("!BBHII", 0x81, 206, 2, 1, consumer_ssrc(0, 0))
    RR = struct.pack("!BBHIIIIIII", 0x81, 201, 7, 1, consumer_ssrc(0, 0), 0, 0, 0, SR_MIDDLE, 0)
    RED = make_rtp(seq=5, ts=960, ssrc=OPUS_SSRC, pt=OPUS_RED_PT,
                   payload=make_red_payload(111, b"\xfcnow", [(111, 960, b"\xfcbefore")]))
    GAP = make_rtp(seq=400, ts=90000, ssrc=VP8_SSRC, pt=96, payload=make_vp8_payload(False))
    STORY = [("rtp", 0, KEYFRAME), ("rtp", 0, H264_FIRST), ("tick",), ("nack_seen", 0, 0, 0), ("rtcp", 1, PLI),
             ("rtcp", 0, SR), ("rtcp", 1, RR), ("rtp", 0, RED), ("rtp", 0, GAP), ("tick",), ("reports", 0, 300_000),
             ("recycle_producer", 0), ("tick",)]

    def run(target: "World", ops: list, bucket: str) -> None:
        counts[bucket] += 1
        for op in ops:
            target.apply(op)
        target.drain()

    @fuzz_settings(EXAMPLES["engine_media"])
    @example(ops=STORY, quiet=False)
    @example(ops=STORY, quiet=True)
    @given(ops=st.lists(operations, max_size=12), quiet=st.booleans())
    def fuzz_engine_media(ops, quiet) -> None:
        run(quiet_world if quiet else world, ops, "engine_media")

    rtcp_ops = st.one_of(st.tuples(st.just("rtcp"), sources, rtcp), st.tuples(st.just("rtp"), st.just(0), media()),
                         st.tuples(st.just("nack_seen"), st.integers(0, 2), st.integers(0, 63), u16),
                         st.tuples(st.just("tick")))

    @fuzz_settings(EXAMPLES["engine_rtcp"])
    @given(ops=st.lists(rtcp_ops, min_size=1, max_size=6), quiet=st.booleans())
    def fuzz_engine_rtcp(ops, quiet) -> None:
        run(quiet_world if quiet else world, ops, "engine_rtcp")

    fuzz_functions()
    fuzz_engine_media()
    fuzz_engine_rtcp()

    totals = {k: world.engine.totals()[k] + quiet_world.engine.totals()[k] for k in world.engine.totals()}
    for w in (world, quiet_world):
        for p in w.producers:
            w.engine.producer_stats(p)
        for c in w.consumers.values():
            w.engine.consumer_stats(c)
    rtts = [w.engine.transport_rtt(t) for w in (world, quiet_world) for t in w.viewer_transports]
    print(json.dumps({
        "asan_in_process": asan_in_process, "module": module, "examples": counts, "engine_totals": totals,
        "round_trips": sum(rtt >= 0 for rtt in rtts),
        "drops": {k: world.engine.drop_counts().get(k, 0) + quiet_world.engine.drop_counts().get(k, 0)
                  for k in cy.DROP_REASONS},
    }))


# The engine's world: one publisher transport with VP8 (RTX), H264 (unsignalled SSRCs,
# learned from the mid extension) and Opus producers, and three viewers with different
# extension ids, RTX and NACK settings, each consuming all three producers.
MID_ID, ABS_ID, LEVEL_ID = 4, 2, 1
VP8_SSRC, VP8_RTX_SSRC, OPUS_SSRC, H264_SSRC, H264_RTX_SSRC = 1111, 2222, 3333, 5555, 6666
OPUS_RED_PT = 63
SR_MIDDLE = 0x02030405  # the middle 32 bits of the NTP time in the story's SR (bytes 0..19)
PRODUCERS = [
    dict(kind="video", codec=1, payload_type=96, clock_rate=90000, rtx_payload_type=97,
         ssrc=VP8_SSRC, rtx_ssrc=VP8_RTX_SSRC, mid="0"),
    dict(kind="video", codec=2, payload_type=102, clock_rate=90000, rtx_payload_type=103,
         ssrc=None, rtx_ssrc=None, mid="1"),
    dict(kind="audio", codec=3, payload_type=111, clock_rate=48000, rtx_payload_type=None,
         ssrc=OPUS_SSRC, rtx_ssrc=None, mid="2", red_payload_type=OPUS_RED_PT),
]
VIEWERS = [
    dict(ids=dict(mid=4, abs_send_time=2, audio_level=1), rtx=True, nack=True, mids=["0", "1", "2"], red=True),
    dict(ids=dict(mid=0, abs_send_time=0, audio_level=0), rtx=False, nack=True, mids=["a", "b", "c"]),
    dict(ids=dict(mid=14, abs_send_time=0, audio_level=15), rtx=True, nack=False,
         mids=["x" * 16, "y" * 17, ""]),
]


def consumer_ssrc(viewer: int, producer: int) -> int:
    return 0x40000000 + viewer * 16 + producer


def consumer_rtx_ssrc(viewer: int, producer: int) -> int:
    return 0x50000000 + viewer * 16 + producer


def _all_ssrcs():
    from hypothesis import strategies as st
    return st.sampled_from([VP8_SSRC, VP8_RTX_SSRC, OPUS_SSRC, H264_SSRC, H264_RTX_SSRC]
                           + [consumer_ssrc(v, p) for v in range(3) for p in range(3)]
                           + [consumer_rtx_ssrc(v, p) for v in range(3) for p in range(3)])


class World:
    """An Engine on a real 127.0.0.1 socket, wired as ``sfu/shard`` wires it, plus the peers' sockets."""

    def __init__(self, cy, *, pacer: bool, keyframe_min_interval_s: float) -> None:
        def udp() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            return s

        self.sock = udp()
        self.publisher = udp()
        self.viewers = [udp() for _ in VIEWERS]
        self.stranger = udp()
        self.addresses = [s.getsockname() for s in (self.publisher, *self.viewers, self.stranger)]
        self.slow_path_calls = 0
        self.engine = cy.Engine(self.sock.fileno(), self.on_slow_path, keyframe_min_interval_s=keyframe_min_interval_s,
                                pacer_enabled=pacer, pacer_rate_bps=2_000_000, pacer_burst_bytes=4_000)
        e = self.engine
        self.publisher_transport = e.add_transport(secure=False, mid=MID_ID, abs_send_time=ABS_ID,
                                                   audio_level=LEVEL_ID, rtcp_ssrc=77)
        e.set_transport_address(self.publisher_transport, *self.addresses[0])
        self.viewer_transports = []
        for v, sock in enumerate(self.viewers):
            t = e.add_transport(secure=False, rtcp_ssrc=88 + v)
            e.set_transport_address(t, *sock.getsockname())
            self.viewer_transports.append(t)
        self.producers = [self._add_producer(i) for i in range(len(PRODUCERS))]
        self.consumers: dict[tuple[int, int], int] = {}
        for v in range(len(VIEWERS)):
            for p in range(len(PRODUCERS)):
                self._add_consumer(v, p, 0)
        self.seen: list[deque] = [deque(maxlen=64) for _ in VIEWERS]  # (consumer ssrc, seq) received

    def on_slow_path(self, data: bytes, addr: tuple) -> None:
        self.slow_path_calls += 1

    def _add_producer(self, i: int) -> int:
        spec = PRODUCERS[i]
        return self.engine.add_producer(
            self.publisher_transport, video=spec["kind"] == "video", codec=spec["codec"],
            payload_type=spec["payload_type"], clock_rate=spec["clock_rate"],
            rtx_payload_type=-1 if spec["rtx_payload_type"] is None else spec["rtx_payload_type"],
            ssrc=spec["ssrc"], rtx_ssrc=spec["rtx_ssrc"], mid=spec["mid"].encode(),
            red_payload_type=spec.get("red_payload_type", -1))

    def _add_consumer(self, v: int, p: int, first_seq: int) -> None:
        viewer, spec = VIEWERS[v], PRODUCERS[p]
        rtx_pt = spec["rtx_payload_type"] if viewer["rtx"] else None
        self.consumers[(v, p)] = self.engine.add_consumer(
            self.viewer_transports[v], self.producers[p], payload_type=spec["payload_type"] + v,
            ssrc=consumer_ssrc(v, p), rtx_payload_type=-1 if rtx_pt is None else rtx_pt,
            rtx_ssrc=consumer_rtx_ssrc(v, p) if rtx_pt is not None else None, nack=viewer["nack"],
            mid_value=viewer["mids"][p].encode(), first_seq=first_seq, first_ts=first_seq * 7919,
            first_rtx_seq=first_seq ^ 0x5555,
            red_payload_type=spec["red_payload_type"] + 1 if viewer.get("red") and "red_payload_type" in spec else -1,
            **viewer["ids"])

    def transport(self, i: int) -> int:
        """-1: a slot that never existed (KeyError); 0: publisher; 1-3: viewers."""
        return 99 if i < 0 else ([self.publisher_transport] + self.viewer_transports)[i % 4]

    def apply(self, op: tuple) -> None:
        e, kind = self.engine, op[0]
        if kind in ("rtp", "rtcp", "feed"):
            e.feed(op[2], *self.addresses[op[1]])
        elif kind == "burst":
            count, first_seq, template = op[1:]
            packet = bytearray(template)
            for i in range(count):
                if len(packet) >= 4:
                    struct.pack_into("!H", packet, 2, (first_seq + i) & 0xFFFF)
                e.feed(packet, *self.addresses[0])
                if i % 128 == 127:
                    self.drain()
        elif kind == "nack_seen":
            v, index, blp = op[1:]
            seen = self.seen[v]
            ssrc, seq = seen[index % len(seen)] if seen else (consumer_ssrc(v, 0), index)
            nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 1, ssrc, seq, blp)
            e.feed(nack, *self.addresses[1 + v])
        elif kind == "tick":
            e.tick()
        elif kind == "reports":
            try:
                e.send_receiver_reports(self.transport(op[1]), op[2])
            except KeyError:
                assert op[1] < 0
        elif kind == "send_rtcp":
            try:
                e.send_rtcp(self.transport(op[1]), op[2])
            except KeyError:
                assert op[1] < 0
        elif kind == "recycle_consumer":
            v, p, first_seq = op[1:]
            e.remove_consumer(self.consumers.pop((v, p)))
            self._add_consumer(v, p, first_seq)
        elif kind == "recycle_producer":
            # As Producer.close(): each consumer says BYE and goes, then the producer.
            p = op[1]
            for v in range(len(VIEWERS)):
                e.send_rtcp(self.viewer_transports[v], struct.pack("!BBHI", 0x81, 203, 1, consumer_ssrc(v, p)))
                e.remove_consumer(self.consumers.pop((v, p)))
            e.remove_producer(self.producers[p])
            self.producers[p] = self._add_producer(p)
            for v in range(len(VIEWERS)):
                self._add_consumer(v, p, p * 1000)
        else:
            raise AssertionError(op)

    def drain(self) -> None:
        """Empty the peers' sockets; remember what each viewer got, to NACK it later."""
        ours = {consumer_ssrc(v, p) for v in range(len(VIEWERS)) for p in range(len(PRODUCERS))}
        for v, sock in enumerate(self.viewers):
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                if len(data) >= 12 and not 192 <= data[1] <= 223:
                    seq, ssrc = struct.unpack_from("!H", data, 2)[0], struct.unpack_from("!I", data, 8)[0]
                    if ssrc in ours:
                        self.seen[v].append((ssrc, seq))
        for sock in (self.publisher, self.stranger, self.sock):
            while True:
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    break


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fuzz":
        _fuzz(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} fuzz BUILD_DIR")
