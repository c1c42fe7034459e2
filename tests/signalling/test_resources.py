"""WHIP/WHEP resource semantics and the 4xx answers to bad requests, against a real server."""

from __future__ import annotations

import time

import aiohttp
import pytest

import peers
from conftest import TEST_SECRET
from sfu.auth import issue_token

SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


async def real_offer(video: bool = True, audio: bool = True, direction: str = "sendonly") -> str:
    pc = peers.new_peer_connection()
    if audio:
        pc.addTransceiver("audio", direction=direction)
    if video:
        pc.addTransceiver("video", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_options_advertises_sdp_and_cors(sfu_server):
    async with aiohttp.ClientSession() as http:
        async with http.options(sfu_server.base_url + "/whip/r") as r:
            assert r.status == 204
            assert r.headers["Accept-Post"] == "application/sdp"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Location" in r.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("body,headers,status,reason", [
    ("v=0", {"Content-Type": "text/plain"}, 415, "content type"),
    ("", SDP, 400, ""),
    ("hello world\r\n", SDP, 400, ""),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", SDP, 422, ""),
    ("v=0\r\n" + "a=x:" + "y" * 40000 + "\r\n", SDP, 413, "larger than"),
])
async def test_bad_offers_get_a_clear_4xx(sfu_server, body, headers, status, reason):
    async with aiohttp.ClientSession() as http:
        async with http.post(sfu_server.base_url + "/whip/r", data=body, headers=headers) as r:
            text = await r.text()
            assert r.status == status, text
            assert reason in text
            assert text.strip()


async def test_offer_with_only_unsupported_codecs_is_422(sfu_server):
    offer = await real_offer(audio=False)
    # Keep the video m-line but rename every codec to one we do not serve.
    offer = offer.replace("VP8/90000", "AV1X/90000").replace("H264/90000", "H265X/90000")
    async with aiohttp.ClientSession() as http:
        async with http.post(sfu_server.base_url + "/whip/r", data=offer, headers=SDP) as r:
            assert r.status == 422
            assert "codec" in (await r.text()).lower()


async def test_whep_before_any_publisher_is_409_with_retry_after(sfu_server):
    offer = await real_offer(direction="recvonly")
    async with aiohttp.ClientSession() as http:
        async with http.post(sfu_server.base_url + "/whep/empty", data=offer, headers=SDP) as r:
            assert r.status == 409
            assert int(r.headers["Retry-After"]) > 0


@pytest.mark.parametrize("query,says", [("max_width=0", "pixels"), ("max_width=abc", "pixels"),
                                        ("max_height=-5", "pixels"), ("max_height=99999", "pixels"),
                                        ("max_width=1.5", "pixels"), ("last_n=abc", "last_n"),
                                        ("last_n=-1", "last_n"), ("last_n=65", "last_n")])
async def test_whep_bad_query_is_400(sfu_server, query, says):
    offer = await real_offer(direction="recvonly")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sfu_server.base_url}/whep/empty?{query}", data=offer, headers=SDP) as r:
            assert r.status == 400
            assert says in await r.text()


def test_select_layers_starts_in_the_middle_under_the_room_ceiling():
    from sfu.signalling.sessions import select_layers
    from sfu.signalling.rooms import ProducerInfo  # noqa: F401  (the type select_layers takes)

    class P:
        def __init__(self, rid: str) -> None:
            self.rid, self.id, self.track_id = rid, rid, "t"

    layers = [P("l"), P("m"), P("h")]
    assert [p.rid for p in select_layers(layers, None)] == ["m"]
    assert [p.rid for p in select_layers(layers, None, room_max_layer=0)] == ["l"]
    assert [p.rid for p in select_layers(layers, None, room_max_layer=2)] == ["m"]
    assert [p.rid for p in select_layers(layers, "h")] == ["h"]
    assert [p.rid for p in select_layers(layers, "h", room_max_layer=0)] == ["l"]  # the ceiling holds


async def test_patch_etag_rules_and_ice_restart(sfu_server):
    offer = await real_offer()
    async with aiohttp.ClientSession() as http:
        async with http.post(sfu_server.base_url + "/whip/r", data=offer, headers=SDP) as r:
            assert r.status == 201
            location, etag = r.headers["Location"], r.headers["ETag"]
            assert r.headers["Content-Type"].startswith("application/sdp")
            assert "a=ice-lite" in await r.text()
        url = sfu_server.base_url + location
        trickle = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n" \
                  "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        async with http.patch(url, data=trickle, headers=FRAG) as r:
            assert r.status == 428
        async with http.patch(url, data=trickle, headers={**FRAG, "If-Match": '"stale"'}) as r:
            assert r.status == 412
        async with http.patch(url, data=trickle, headers={"Content-Type": "text/plain", "If-Match": etag}) as r:
            assert r.status == 415
        ufrag = offer.split("a=ice-ufrag:")[1].split()[0]
        same = trickle.replace("abcd", ufrag)
        async with http.patch(url, data=same, headers={**FRAG, "If-Match": etag}) as r:
            assert r.status == 204
        async with http.patch(url, data=trickle, headers={**FRAG, "If-Match": "*"}) as r:
            assert r.status == 200
            new_etag = r.headers["ETag"]
            body = await r.text()
            assert new_etag != etag
            assert "a=ice-ufrag:" in body and "a=ice-pwd:" in body and "a=candidate:" in body
        async with http.patch(url, data=trickle, headers={**FRAG, "If-Match": etag}) as r:
            assert r.status == 412
        async with http.delete(url) as r:
            assert r.status == 200
        async with http.delete(url) as r:
            assert r.status == 404


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_unknown_resource_is_404(sfu_server, method):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, sfu_server.base_url + "/whip/r/nosuchsession",
                                headers={**FRAG, "If-Match": "*"}) as r:
            assert r.status == 404


def _auth(token: str) -> dict[str, str]:
    return {**SDP, "Authorization": f"Bearer {token}"}


async def test_tokens_guard_publish_and_subscribe(sfu_auth_server):
    base = sfu_auth_server.base_url
    offer = await real_offer()
    now = time.time()
    cases = [
        ({**SDP}, 401, "missing bearer token"),
        (_auth("garbage"), 401, "malformed"),
        (_auth(issue_token("another-secret-0123456789abcdef0123", "r", publish=True)), 401, "signature"),
        (_auth(issue_token(TEST_SECRET, "r", publish=True, ttl_s=10, now=now - 60)), 401, "expired"),
        (_auth(issue_token(TEST_SECRET, "other", publish=True)), 403, "room"),
        (_auth(issue_token(TEST_SECRET, "r", subscribe=True)), 403, "publish"),
    ]
    async with aiohttp.ClientSession() as http:
        for headers, status, reason in cases:
            async with http.post(base + "/whip/r", data=offer, headers=headers) as r:
                assert r.status == status, (reason, await r.text())
                assert reason in await r.text()
        good = issue_token(TEST_SECRET, "r", publish=True)
        async with http.post(base + "/whip/r", data=offer, headers=_auth(good)) as r:
            assert r.status == 201
            location = r.headers["Location"]
        # The resource is guarded by the same token.
        async with http.delete(base + location) as r:
            assert r.status == 401
        async with http.delete(base + location, headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 200


async def test_authorised_publish_and_watch_carry_media(sfu_auth_server):
    base = sfu_auth_server.base_url
    publisher = await peers.publish(base, "secure", token=issue_token(TEST_SECRET, "secure", publish=True))
    viewer = await peers.watch(base, "secure", token=issue_token(TEST_SECRET, "secure", subscribe=True))
    try:
        await viewer.wait_frames(10)
    finally:
        await viewer.close()
        await publisher.close()


async def test_pages_health_and_metrics(sfu_server):
    async with aiohttp.ClientSession() as http:
        async with http.get(sfu_server.base_url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(sfu_server.base_url + "/metrics") as r:
            text = await r.text()
            assert "sfu_rtp_packets_received_total" in text
            assert "sfu_packets_dropped_total" in text or "sfu_packets_dropped" in text
        async with http.get(sfu_server.base_url + "/nope") as r:
            assert r.status == 404


@pytest.mark.parametrize("name", ["chrome_publish", "obs_whip", "firefox_sendrecv", "aiortc_sendrecv"])
async def test_publisher_offers_in_real_shapes_are_answered(sfu_server, name):
    from pathlib import Path
    offer = (Path(__file__).parent.parent / "data" / "sdp" / f"{name}.sdp").read_text()
    async with aiohttp.ClientSession() as http:
        async with http.post(sfu_server.base_url + f"/whip/{name}", data=offer, headers=SDP) as r:
            answer = await r.text()
            assert r.status == 201, answer
    assert "a=ice-lite" in answer and "a=recvonly" in answer
    assert "a=candidate:1 1 udp 2130706431 127.0.0.1" in answer
    assert "a=fingerprint:sha-256 " in answer


@pytest.mark.parametrize("path,marker", [
    ("/", "publish.html"), ("/publish.html", "whip.js"), ("/watch.html", "sfuStats"),
    ("/static/whip.js", "Retry-After"),
])
async def test_builtin_pages_are_served(sfu_server, path, marker):
    async with aiohttp.ClientSession() as http:
        async with http.get(sfu_server.base_url + path) as r:
            assert r.status == 200
            assert marker in await r.text()
