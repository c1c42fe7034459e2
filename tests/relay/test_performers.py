"""Issue 8's four performers: two sites (network namespaces joined by a veth, 30 ms one
way and 1 % loss between them: ``bench.netsites``), a node per site relaying over QUIC,
two performers per site in one co-performance room. Each publishes at its own site's
node (no redirect to the room's home), and each receives every other's audio and video;
the room tells each the estimated one-way delay from every other, which across the
sites includes the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.netsites import NetSites

PERFORMER = str(Path(__file__).resolve().parent / "performer.py")
ROOM = "choir-rehearsal"
DELAY_MS = 30.0


@pytest.mark.timeout(240)
def test_four_performers_two_per_site_each_receive_every_other() -> None:
    with NetSites(delay_ms=DELAY_MS, loss=0.01) as sites:
        redis = sites.start_redis("a")
        nodes = {name: sites.start_node(name, redis_url=redis.url, args=("--performance-rooms", "choir-*"))
                 for name in ("a", "b")}
        token = sites.token(ROOM, publish=True, subscribe=True)
        performers = {}
        try:
            for name in ("a1", "a2", "b1", "b2"):
                site = sites[name[0]]
                performers[name] = site.python(PERFORMER, "--url", nodes[name[0]].url, "--room", ROOM,
                                               "--name", name, "--token", token, name=f"performer-{name}")
            ids = {name: p.wait_json("joined", timeout=30)["participant"] for name, p in performers.items()}
            names = {pid: name for name, pid in ids.items()}
            for name, p in performers.items():
                p.wait_json("published", timeout=30)

            for name, p in performers.items():
                receiving = p.wait_json("receiving", timeout=60)
                got = sorted((s["kind"], names[s["participant"]]) for s in receiving["frames"].values())
                others = sorted(n for n in ids if n != name)
                assert got == sorted((kind, o) for kind in ("audio", "video") for o in others), (name, receiving)

            for name, p in performers.items():
                delays = p.wait_json("delays", timeout=30)
                print(f"{name} hears " + ", ".join(f"{names[o]} {d['one_way_ms']} ms" for o, d in delays["delays"].items()))
                assert {names[o] for o in delays["delays"]} == {n for n in ids if n != name}, delays
                for other, d in delays["delays"].items():
                    across = names[other][0] != name[0]
                    assert d["node"] == names[other][0], d
                    if across:
                        # Half the QUIC relay's round trip: the path's 30 ms each way, and a little.
                        assert DELAY_MS * 0.9 <= d["relay_ms"] <= DELAY_MS * 2, (name, names[other], d)
                        assert d["one_way_ms"] >= DELAY_MS * 0.9, (name, names[other], d)
                    else:
                        # Same site: no path between them but their own links to the node.
                        assert d["relay_ms"] == 0 and d["one_way_ms"] < DELAY_MS * 0.9, (name, names[other], d)

            # A performer leaving is seen at the other site: participant and tracks gone.
            performers["b2"].stop()
            for name in ("a1", "b1"):
                performers[name].wait_line(lambda line: '"participant_left"' in line and ids["b2"] in line, timeout=15)
                performers[name].wait_line(lambda line: '"track_unpublished"' in line and ids["b2"] in line,
                                           timeout=15)
        finally:
            for p in performers.values():
                p.stop()
            for node in nodes.values():
                node.stop()
