"""Two QUIC relay endpoints in one process, with UDP sockets standing in for shards and a
userspace relay between them that can cut the link."""

from __future__ import annotations

import asyncio
import socket
import struct

from conftest import free_port
from sfu.relay.certs import write_cluster_certs
from sfu.relay.quic_endpoint import QuicEndpoint, flow_ssrc


def rtp(ssrc: int, seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + b"\x10\x00" + bytes(100)


def pli(sender: int, media: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, sender, media)


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


KEY = b"cluster hello key, derived from its secret"


def endpoint(tmp_path, certs, name: str, port: int, key: bytes = KEY, public_port: int = 0) -> QuicEndpoint:
    return QuicEndpoint(certificate=str(certs[name][0]), private_key=str(certs[name][1]), ca=str(tmp_path / "ca.pem"),
                        quic_host="127.0.0.1", quic_port=port, public_port=public_port, hello_key=key)


def test_flow_ssrc_names_rtp_and_feedback():
    assert flow_ssrc(rtp(1234, 7)) == (1234, False)
    assert flow_ssrc(pli(1, 99)) == (99, True)
    assert flow_ssrc(b"\x00" * 20) is None and flow_ssrc(b"\x80") is None


async def test_media_crosses_feedback_returns_and_a_cut_link_comes_back(tmp_path) -> None:
    certs = write_cluster_certs(tmp_path, ["a", "b"])
    loop = asyncio.get_running_loop()
    b_port = free_port(socket.SOCK_DGRAM)
    # A dials B through a relay it can cut; B listens on b_port.
    cut = Cuttable(("127.0.0.1", b_port))
    cut.transport, _ = await loop.create_datagram_endpoint(lambda: cut, local_addr=("127.0.0.1", 0))
    cut_port = cut.transport.get_extra_info("sockname")[1]

    class Back(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not cut.cut and cut.client is not None:
                cut.transport.sendto(data, cut.client)

    cut.upstream, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
    a = endpoint(tmp_path, certs, "a", free_port(socket.SOCK_DGRAM))
    b = endpoint(tmp_path, certs, "b", b_port)
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
        # cannot be repaired by NACK), on the control stream after A's hello: B knew the
        # new connection for A's by what it said, not by the datagrams it carried.
        assert sum(d[1] == 206 for d in shard_a.got) > plis_before
        assert a.snapshot()["peers"][f"127.0.0.1:{cut_port}"]["keyframe_requests"] >= 1
        assert b.snapshot()["peers"][f"127.0.0.1:{a.quic_port}"]["accepted"] >= 2
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


async def test_a_hello_without_the_clusters_key_is_refused(tmp_path) -> None:
    """Someone who reaches B's QUIC port and claims to be node A, without the cluster's
    key: B closes the connection, takes none of its media, and sends it none of A's."""
    certs = write_cluster_certs(tmp_path, ["a", "b", "x"])
    loop = asyncio.get_running_loop()
    a_port, b_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    b = endpoint(tmp_path, certs, "b", b_port)
    intruder = endpoint(tmp_path, certs, "x", free_port(socket.SOCK_DGRAM), key=b"not the cluster's", public_port=a_port)
    a = endpoint(tmp_path, certs, "a", a_port)
    shard_a, shard_b, shard_x = Shard(), Shard(), Shard()
    ta, _ = await loop.create_datagram_endpoint(lambda: shard_a, local_addr=("127.0.0.1", 0))
    tb, _ = await loop.create_datagram_endpoint(lambda: shard_b, local_addr=("127.0.0.1", 0))
    tx, _ = await loop.create_datagram_endpoint(lambda: shard_x, local_addr=("127.0.0.1", 0))
    try:
        for e in (b, intruder, a):
            await e.start()
        b.add_flow([1111], "in", ("127.0.0.1", a_port), tb.get_extra_info("sockname")[1])
        intruder.add_flow([1111], "out", ("127.0.0.1", b_port), tx.get_extra_info("sockname")[1])
        for seq in range(100):
            tx.sendto(rtp(1111, seq), ("127.0.0.1", intruder.local_port))
            await asyncio.sleep(0.01)
        assert shard_b.got == [] and b.snapshot()["refused"] >= 1
        assert f"127.0.0.1:{a_port}" not in b.links and not any(k[1] == a_port for k in b.links)

        # The real A, with the key: its flow is taken.
        a.add_flow([1111], "out", ("127.0.0.1", b_port), ta.get_extra_info("sockname")[1])
        for seq in range(100, 200):
            ta.sendto(rtp(1111, seq), ("127.0.0.1", a.local_port))
            await asyncio.sleep(0.01)
        assert len(shard_b.got) > 50
        assert b.snapshot()["peers"][f"127.0.0.1:{a_port}"]["accepted"] >= 1
    finally:
        for e in (a, b, intruder):
            await e.close()
        for t in (ta, tb, tx):
            t.close()


async def test_garbage_on_the_control_stream_is_counted_not_fatal(tmp_path) -> None:
    certs = write_cluster_certs(tmp_path, ["a", "b"])
    loop = asyncio.get_running_loop()
    a_port, b_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    a, b = endpoint(tmp_path, certs, "a", a_port), endpoint(tmp_path, certs, "b", b_port)
    shard_a, shard_b = Shard(), Shard()
    ta, _ = await loop.create_datagram_endpoint(lambda: shard_a, local_addr=("127.0.0.1", 0))
    tb, _ = await loop.create_datagram_endpoint(lambda: shard_b, local_addr=("127.0.0.1", 0))
    try:
        await a.start()
        await b.start()
        b.add_flow([7], "in", ("127.0.0.1", a_port), tb.get_extra_info("sockname")[1])
        a.add_flow([7], "out", ("127.0.0.1", b_port), ta.get_extra_info("sockname")[1])
        for seq in range(50):  # until the link is up and carries the flow
            ta.sendto(rtp(7, seq), ("127.0.0.1", a.local_port))
            await asyncio.sleep(0.05)
            if shard_b.got:
                break
        link = a.links[("127.0.0.1", b_port)]
        carried = len(shard_b.got)
        for junk in [b"not json", b"[1]", b'{"type": "keyframe", "ssrcs": "all"}', b'{"type": "fly"}',
                     b'{"type": "hello", "from": "nowhere"}', "\u00ff".encode("latin-1")]:
            link._quic.send_stream_data(link.control_stream, junk + b"\n")
        link.transmit()
        await asyncio.sleep(0.3)
        assert b.snapshot()["peers"][f"127.0.0.1:{a_port}"]["bad_control"] == 6
        ta.sendto(rtp(7, 100), ("127.0.0.1", a.local_port))  # the link still carries media
        await asyncio.sleep(0.3)
        assert len(shard_b.got) == carried + 1
    finally:
        await a.close()
        await b.close()
        ta.close()
        tb.close()
