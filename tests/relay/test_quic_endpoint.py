"""Two QUIC relay endpoints in one process, with UDP sockets standing in for shards and a
userspace relay between them that can cut the link."""

from __future__ import annotations

import asyncio
import socket
import struct

from sfu.relay.certs import write_cluster_certs
from sfu.relay.quic_endpoint import QuicEndpoint, flow_ssrc


def rtp(ssrc: int, seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + b"\x10\x00" + bytes(100)


def pli(sender: int, media: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, sender, media)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cuttable(asyncio.DatagramProtocol):
    """A UDP relay from ``listen`` to ``target`` and back; ``cut`` drops everything."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cut = False
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr) -> None:
        self.client = addr
        if not self.cut and self.upstream is not None:
            self.upstream.sendto(data, self.target)


class Shard(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.got.append(data)


def test_flow_ssrc_names_rtp_and_feedback():
    assert flow_ssrc(rtp(1234, 7)) == (1234, False)
    assert flow_ssrc(pli(1, 99)) == (99, True)
    assert flow_ssrc(b"\x00" * 20) is None and flow_ssrc(b"\x80") is None


async def test_media_crosses_feedback_returns_and_a_cut_link_comes_back(tmp_path) -> None:
    certs = write_cluster_certs(tmp_path, ["a", "b"])
    loop = asyncio.get_running_loop()
    b_port = free_udp_port()
    # A dials B through a relay it can cut; B listens on b_port.
    cut = Cuttable(("127.0.0.1", b_port))
    cut.transport, _ = await loop.create_datagram_endpoint(lambda: cut, local_addr=("127.0.0.1", 0))
    cut_port = cut.transport.get_extra_info("sockname")[1]

    class Back(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not cut.cut and cut.client is not None:
                cut.transport.sendto(data, cut.client)

    cut.upstream, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
    a = QuicEndpoint(certificate=str(certs["a"][0]), private_key=str(certs["a"][1]), ca=str(tmp_path / "ca.pem"),
                     quic_host="127.0.0.1", quic_port=free_udp_port())
    b = QuicEndpoint(certificate=str(certs["b"][0]), private_key=str(certs["b"][1]), ca=str(tmp_path / "ca.pem"),
                     quic_host="127.0.0.1", quic_port=b_port)
    await a.start()
    await b.start()
    shard_a, shard_b = Shard(), Shard()
    ta, _ = await loop.create_datagram_endpoint(lambda: shard_a, local_addr=("127.0.0.1", 0))
    tb, _ = await loop.create_datagram_endpoint(lambda: shard_b, local_addr=("127.0.0.1", 0))
    try:
        a.add_flow([1111], "out", ("127.0.0.1", cut_port), ta.get_extra_info("sockname")[1])
        b.add_flow([1111], "in", ("127.0.0.1", a.quic_port), tb.get_extra_info("sockname")[1])

        async def send_for(seconds: float, start: int) -> int:
            seq = start
            end = loop.time() + seconds
            while loop.time() < end:
                ta.sendto(rtp(1111, seq), ("127.0.0.1", a.local_port))
                seq += 1
                await asyncio.sleep(0.01)
            return seq

        seq = await send_for(1.5, 0)
        assert len(shard_b.got) > 100 and flow_ssrc(shard_b.got[-1]) == (1111, False)
        # Feedback from B's shard about the flow reaches A's shard.
        tb.sendto(pli(5, 1111), ("127.0.0.1", b.local_port))
        await asyncio.sleep(0.2)
        assert any(d[1] == 206 for d in shard_a.got)
        peer = a.snapshot()["peers"][f"127.0.0.1:{cut_port}"]
        assert peer["connected"] and peer["rtt_ms"] is not None and peer["sent"] > 100

        # Cut the link for 5 s: the connection dies, A dials again, the flow resumes.
        cut.cut = True
        seq = await send_for(5.0, seq)
        cut.cut = False
        before = len(shard_b.got)
        plis_before = sum(d[1] == 206 for d in shard_a.got)
        seq = await send_for(4.0, seq)
        # B asked A's shard for a keyframe as soon as the link was back (the cut's loss
        # cannot be repaired by NACK).
        assert sum(d[1] == 206 for d in shard_a.got) > plis_before
        assert len(shard_b.got) - before > 100, "the flow did not resume after the cut"
        stats = a.snapshot()["peers"][f"127.0.0.1:{cut_port}"]
        assert stats["reconnects"] >= 1, stats
        lost = sum(s["lost"] for s in b.snapshot()["peers"].values())
        assert lost >= 300  # the cut's packets, counted as lost by the receiving side
    finally:
        await a.close()
        await b.close()
        ta.close()
        tb.close()
        cut.transport.close()
        cut.upstream.close()
