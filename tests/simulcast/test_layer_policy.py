"""LayerPolicy and order_layers: time is driven by hand, never read from a clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.simulcast import DEFAULT_HEADROOM, DEFAULT_UP_HOLD_S, Layer, LayerPolicy, Target, order_layers
from sfu.simulcast.layer_policy import PROBE_PAUSE_AFTER_DOWN_S, START_PROBE_S

LOW, MID, HIGH = 150_000.0, 500_000.0, 1_700_000.0
SIZES = ((320, 180), (640, 360), (1280, 720))
UNLIMITED = 10_000_000.0
TICK_S = 0.1


def make_layers(
    *,
    bitrates: tuple[float, ...] = (LOW, MID, HIGH),
    active: tuple[bool, ...] = (True, True, True),
    temporal_layers: int = 1,
    sizes: bool = True,
) -> list[Layer]:
    return [
        Layer(spatial=i, rid="qhf"[i], bitrate_bps=bps, width=SIZES[i][0] if sizes else None,
              height=SIZES[i][1] if sizes else None, temporal_layers=temporal_layers, active=on)
        for i, (bps, on) in enumerate(zip(bitrates, active))
    ]


def run(
    policy: LayerPolicy,
    layers: list[Layer],
    estimate: Callable[[float], float] | float | None,
    start_s: float,
    end_s: float,
) -> list[tuple[float, Target | None]]:
    """Feed an estimate and decide every TICK_S over [start_s, end_s); times are exact tenths."""
    out: list[tuple[float, Target | None]] = []
    for i in range(round(start_s / TICK_S), round(end_s / TICK_S)):
        now = i / 10
        if estimate is not None:
            policy.on_bandwidth_estimate(estimate(now) if callable(estimate) else estimate, now)
        out.append((now, policy.decide(layers, now)))
    return out


def first_time(history: list[tuple[float, Target | None]], spatial: int) -> float:
    return next(t for t, target in history if target is not None and target.spatial == spatial)


def settled_at_top(layers: list[Layer] | None = None) -> LayerPolicy:
    policy = LayerPolicy()
    run(policy, layers or make_layers(), UNLIMITED, 0, 20)
    assert policy.target == Target(2, 0)
    return policy


# -- the three viewers, drops and recovery ------------------------------------


@pytest.mark.parametrize("estimate_bps, spatial", [(150_000, 0), (600_000, 1), (UNLIMITED, 2)])
def test_three_viewers_settle_on_low_middle_high(estimate_bps: float, spatial: int) -> None:
    history = run(LayerPolicy(), make_layers(), estimate_bps, 0, 5)
    assert history[-1][1] == Target(spatial, 0)
    assert first_time(history, spatial) <= 2 * DEFAULT_UP_HOLD_S  # one hold per step


def test_drop_goes_down_in_the_same_call() -> None:
    layers = make_layers()
    policy = settled_at_top(layers)
    policy.on_bandwidth_estimate(700_000, 20.0)
    assert policy.decide(layers, 20.0) == Target(1, 0)
    policy = settled_at_top(layers)
    policy.on_bandwidth_estimate(200_000, 20.0)  # several steps at once
    assert policy.decide(layers, 20.0) == Target(0, 0)


def test_estimate_in_the_hysteresis_band_keeps_the_layer() -> None:
    layers = make_layers()
    policy = settled_at_top(layers)
    history = run(policy, layers, HIGH * 1.01, 20, 60)  # below HIGH * headroom, above HIGH
    assert {target for _, target in history} == {Target(2, 0)}


def test_recovery_climbs_back_one_step_per_hold() -> None:
    layers = make_layers()
    policy = settled_at_top(layers)
    run(policy, layers, 200_000, 20, 25)
    assert policy.target == Target(0, 0)
    history = run(policy, layers, UNLIMITED, 25, 40)
    spatials = [target.spatial for _, target in history if target is not None]
    assert [b - a for a, b in zip(spatials, spatials[1:]) if b != a] == [1, 1]
    assert first_time(history, 1) == 25 + DEFAULT_UP_HOLD_S
    assert first_time(history, 2) == 25 + 2 * DEFAULT_UP_HOLD_S


def test_the_hold_restarts_when_the_estimate_dips() -> None:
    layers = make_layers()
    policy = LayerPolicy()
    run(policy, layers, 600_000, 0, 10)
    assert policy.target == Target(1, 0)
    # Above the top layer's need, except one dip at 11.0 reported between two decides.
    for i in range(100, 130):
        now = i / 10
        policy.on_bandwidth_estimate(UNLIMITED, now)
        if i == 110:
            policy.on_bandwidth_estimate(1_900_000, now + 0.05)
            policy.on_bandwidth_estimate(UNLIMITED, now + 0.06)
        policy.decide(layers, now)
        if now < 11.06 + DEFAULT_UP_HOLD_S:
            assert policy.target == Target(1, 0), now
    assert policy.target == Target(2, 0)


# -- no oscillation -------------------------------------------------------------------


def square_wave(low_bps: float, high_bps: float, half_period_s: float) -> Callable[[float], float]:
    return lambda now: high_bps if int(now / half_period_s + 1e-9) % 2 == 0 else low_bps


def count_switches(history: list[tuple[float, Target | None]]) -> int:
    targets = [target for _, target in history]
    return sum(1 for a, b in zip(targets, targets[1:]) if a != b)


@pytest.mark.parametrize("half_period_s", [0.3, 1.0, 2.0, 3.0, 5.0, 8.0, 9.5])
@pytest.mark.parametrize("low_bps, high_bps", [(1_900_000, 2_200_000), (1_400_000, 2_500_000)])
def test_flapping_estimate_does_not_oscillate(low_bps: float, high_bps: float, half_period_s: float) -> None:
    """An estimate bouncing around the top layer's threshold for a minute, faster than
    FLAP_WINDOW_S. Without hysteresis the 0.3 s wave would switch 200 times."""
    layers = make_layers()
    policy = LayerPolicy()
    run(policy, layers, 600_000, 0, 5)  # on the middle layer
    history = run(policy, layers, square_wave(low_bps, high_bps, half_period_s), 5, 65)
    switches = count_switches(history)
    if low_bps >= HIGH:  # the dips stay inside the hysteresis band: at most the one climb
        assert switches <= 1
    else:  # each failed climb quadruples the hold: up/down twice, then it sits it out
        assert switches <= 4, switches
        assert count_switches(history[-300:]) == 0  # the last 30 s are quiet


def test_slow_changes_are_followed() -> None:
    """A link that really changes every 20 s is tracked, climb after climb."""
    layers = make_layers()
    policy = LayerPolicy()
    run(policy, layers, 600_000, 0, 5)
    # 1.2M is below the top layer's 1.7M * STAY_FACTOR: each fall is followed.
    history = run(policy, layers, square_wave(1_200_000, 2_500_000, 20.0), 5, 125)
    assert count_switches(history) == 7  # every change from 20 s on, and the first climb


def test_failed_climb_lengthens_the_hold_and_a_lasting_one_resets_it() -> None:
    layers = make_layers()
    policy = LayerPolicy()
    run(policy, layers, UNLIMITED, 0, 4)
    assert policy.target == Target(2, 0)  # climbed at 3.0
    run(policy, layers, 1_000_000, 4, 5)  # 1.0 s later: the climb failed
    assert policy.target == Target(1, 0)
    history = run(policy, layers, UNLIMITED, 5, 20)
    assert first_time(history, 2) == 5 + 4 * DEFAULT_UP_HOLD_S
    run(policy, layers, UNLIMITED, 20, 40)  # held 12 s > FLAP_WINDOW_S: the backoff is forgiven
    run(policy, layers, 1_000_000, 40, 41)
    history = run(policy, layers, UNLIMITED, 41, 50)
    assert first_time(history, 2) == 41 + DEFAULT_UP_HOLD_S


# -- loss -----------------------------------------------------------------------------


def test_sustained_loss_steps_down_even_with_a_good_estimate() -> None:
    layers = make_layers()
    policy = settled_at_top(layers)
    policy.on_bandwidth_estimate(UNLIMITED, 20.0)
    policy.on_loss(0.2, 20.0)
    assert policy.decide(layers, 20.0) == Target(2, 0)  # one lossy report is not enough
    policy.on_loss(0.2, 21.0)
    assert policy.decide(layers, 21.0) == Target(1, 0)  # one step, not to the bottom
    policy.on_loss(0.2, 22.0)
    assert policy.decide(layers, 22.0) == Target(1, 0)  # a new lossy run must build up again
    policy.on_loss(0.2, 23.0)
    assert policy.decide(layers, 23.0) == Target(0, 0)
    assert not policy.probing


def test_one_loss_burst_is_forgiven() -> None:
    layers = make_layers()
    policy = settled_at_top(layers)
    for now, fraction in ((20.0, 0.3), (21.0, 0.0), (22.0, 0.3), (23.0, 0.01)):
        policy.on_loss(fraction, now)
        assert policy.decide(layers, now) == Target(2, 0)


def test_moderate_loss_blocks_climbing_without_dropping() -> None:
    layers = make_layers()
    policy = LayerPolicy(start_spatial=1)
    for second in range(30):
        policy.on_loss(0.05, float(second))
        run(policy, layers, UNLIMITED, second, second + 1)
    assert policy.target == Target(1, 0)
    policy.on_loss(0.0, 30.0)
    history = run(policy, layers, UNLIMITED, 30, 35)
    assert first_time(history, 2) == 30 + DEFAULT_UP_HOLD_S


# -- caps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_, spatial",
    [
        ({"width": 640}, 1),
        ({"width": 641}, 2),
        ({"height": 360}, 1),
        ({"height": 200}, 1),
        ({"width": 100}, 0),
        ({"width": 4000}, 2),  # nothing fills it: the biggest there is
        ({"width": 640, "height": 720}, 1),  # letterboxed: filling one dimension is enough
        ({"width": 1280, "height": 10}, 0),
        ({"spatial": 0}, 0),
        ({"spatial": 1}, 1),
        ({"spatial": 2, "width": 320}, 0),  # the tighter cap wins
        ({}, 2),
    ],
)
def test_requested_max(request_: dict[str, int], spatial: int) -> None:
    policy = LayerPolicy()
    policy.set_requested_max(**request_)
    run(policy, make_layers(), UNLIMITED, 0, 20)
    assert policy.target == Target(spatial, 0)


def test_requested_size_is_ignored_until_sizes_are_known() -> None:
    policy = LayerPolicy()
    policy.set_requested_max(width=320)
    run(policy, make_layers(sizes=False), UNLIMITED, 0, 20)
    assert policy.target == Target(2, 0)
    assert policy.decide(make_layers(), 20.0) == Target(0, 0)  # a keyframe told us the sizes


def test_requested_max_lowers_at_once_and_raises_with_the_hold() -> None:
    layers = make_layers()
    policy = settled_at_top(layers)
    policy.set_requested_max(width=320, height=180)  # the window was made small
    assert policy.decide(layers, 20.0) == Target(0, 0)
    policy.set_requested_max()  # and big again
    history = run(policy, layers, UNLIMITED, 21, 30)
    assert first_time(history, 1) == 21 + DEFAULT_UP_HOLD_S
    assert first_time(history, 2) == 21 + 2 * DEFAULT_UP_HOLD_S


def test_room_cap_and_start_layer() -> None:
    layers = make_layers()
    policy = LayerPolicy(room_max_spatial=1, start_spatial=1)
    assert policy.decide(layers, 0.0) == Target(1, 0)  # a large meeting starts in the middle
    run(policy, layers, UNLIMITED, 0, 20)
    assert policy.target == Target(1, 0)
    policy.set_room_cap(None)
    history = run(policy, layers, UNLIMITED, 20, 30)
    assert first_time(history, 2) == 20 + DEFAULT_UP_HOLD_S
    policy.set_room_cap(0)
    assert policy.decide(layers, 30.0) == Target(0, 0)


@pytest.mark.parametrize("start_spatial, spatial", [(None, 0), (0, 0), (1, 1), (2, 2), (7, 2)])
def test_without_an_estimate_it_stays_on_the_start_layer(start_spatial: int | None, spatial: int) -> None:
    policy = LayerPolicy(start_spatial=start_spatial)
    history = run(policy, make_layers(), None, 0, 60)
    assert {target for _, target in history} == {Target(spatial, 0)}
    assert not policy.probing


# -- inactive and vanishing layers ----------------------------------------------------


def test_inactive_layers_are_never_chosen() -> None:
    policy = LayerPolicy(start_spatial=2)
    layers = make_layers(active=(True, True, False))
    history = run(policy, layers, UNLIMITED, 0, 20)
    assert {target for _, target in history} == {Target(1, 0)}


def test_current_layer_going_inactive_falls_back_at_once() -> None:
    policy = settled_at_top()
    assert policy.decide(make_layers(active=(True, True, False)), 20.0) == Target(1, 0)
    assert policy.decide(make_layers(active=(True, False, False)), 20.1) == Target(0, 0)
    assert policy.decide(make_layers(active=(False, False, False)), 20.2) is None
    assert policy.decide([], 20.3) is None
    assert not policy.probing


def test_vanished_layer_falls_back_to_the_nearest_cheaper_on_a_tie() -> None:
    layers = make_layers()
    policy = LayerPolicy(start_spatial=1)
    assert policy.decide(layers, 0.0) == Target(1, 0)
    assert policy.decide([layers[0], layers[2]], 0.1) == Target(0, 0)
    policy = LayerPolicy(start_spatial=1)
    policy.decide(layers, 0.0)
    assert policy.decide([layers[2]], 0.1) == Target(2, 0)  # the only one left, even if it is big
    policy.on_bandwidth_estimate(100_000, 0.2)
    assert policy.decide([layers[2]], 0.2) == Target(2, 0)  # never a layer that does not exist


def test_cap_below_every_active_layer_gives_the_lowest_active() -> None:
    policy = LayerPolicy(room_max_spatial=0)
    run(policy, make_layers(active=(False, True, True)), UNLIMITED, 0, 20)
    assert policy.target == Target(1, 0)


def test_returning_layer_is_climbed_to_with_the_hold() -> None:
    policy = settled_at_top()
    run(policy, make_layers(active=(True, True, False)), UNLIMITED, 20, 25)
    assert policy.target == Target(1, 0)
    history = run(policy, make_layers(), UNLIMITED, 25, 30)
    assert first_time(history, 2) == 25 + DEFAULT_UP_HOLD_S


# -- temporal layers ------------------------------------------------------------------


def test_temporal_layers_are_dropped_on_the_lowest_layer_only() -> None:
    layers = make_layers(temporal_layers=3)
    policy = LayerPolicy()
    # Low layer, 3 TLs: TID0 = 40 %, TID0-1 = 60 % of 150k (libwebrtc's split).
    # 110k: below 150k * STAY_FACTOR (120k), so TID0-2 goes; 0.6 * 150k * 1.2 = 108k fits.
    policy.on_bandwidth_estimate(110_000, 0.0)
    assert policy.decide(layers, 0.0) == Target(0, 1)
    policy.on_bandwidth_estimate(60_000, 1.0)  # below 90k * STAY_FACTOR
    assert policy.decide(layers, 1.0) == Target(0, 0)
    policy.on_bandwidth_estimate(10_000, 2.0)
    assert policy.decide(layers, 2.0) == Target(0, 0)  # the floor
    history = run(policy, layers, UNLIMITED, 3, 20)
    targets = [target for _, target in history]
    assert [t for a, t in zip(targets, targets[1:]) if t != a] == [Target(0, 1), Target(0, 2), Target(1, 2),
                                                                    Target(2, 2)]
    policy.on_bandwidth_estimate(1_000_000, 20.0)
    assert policy.decide(layers, 20.0) == Target(1, 2)  # the middle layer at full frame rate


def test_temporal_target_follows_the_layers_temporal_count() -> None:
    policy = LayerPolicy()
    assert policy.decide(make_layers(temporal_layers=3), 0.0) == Target(0, 2)
    assert policy.decide(make_layers(temporal_layers=2), 0.1) == Target(0, 1)


# -- probing --------------------------------------------------------------------------


def test_probing_intent() -> None:
    layers = make_layers()
    policy = LayerPolicy()
    run(policy, layers, 300_000, 0, 5)
    assert policy.target == Target(0, 0)
    assert policy.probing
    assert policy.probe_target_bps == pytest.approx(MID * DEFAULT_HEADROOM)
    policy.on_loss(0.05, 5.0)
    policy.decide(layers, 5.0)
    assert not policy.probing  # not into loss
    policy.on_loss(0.0, 6.0)
    policy.on_bandwidth_estimate(100_000, 6.0)
    policy.decide(layers, 6.0)
    assert not policy.probing  # not while the current layer does not even fit
    top = settled_at_top(layers)
    assert not top.probing and top.probe_target_bps is None


def test_went_down_tells_congestion_from_a_cap() -> None:
    """The caller holds the old layer on a congested link only: a move down on the
    estimate or on loss is that, one because a cap came down is not."""
    layers = make_layers()
    policy = settled_at_top(layers)
    assert not policy.went_down
    policy.on_bandwidth_estimate(700_000, 20.0)
    assert policy.decide(layers, 20.0) == Target(1, 0) and policy.went_down
    assert policy.decide(layers, 20.1) == Target(1, 0) and not policy.went_down  # one call only
    policy = settled_at_top(layers)
    for t in (20.0, 20.5, 21.0):  # sustained loss
        policy.on_loss(0.3, t)
    assert policy.decide(layers, 21.0) == Target(1, 0) and policy.went_down
    policy = settled_at_top(layers)
    policy.set_requested_max(spatial=0)
    assert policy.decide(layers, 20.0) == Target(0, 0) and not policy.went_down
    policy = settled_at_top(layers)
    policy.set_room_cap(1)
    assert policy.decide(layers, 20.0) == Target(1, 0) and not policy.went_down


def test_no_probing_for_a_while_after_a_move_down() -> None:
    """Padding into a link that just overflowed would refill the queue the lower layer's
    keyframe has to pass: the probe waits PROBE_PAUSE_AFTER_DOWN_S after a move down."""
    layers = make_layers()
    policy = settled_at_top(layers)
    policy.on_bandwidth_estimate(900_000, 20.0)
    assert policy.decide(layers, 20.0) == Target(1, 0) and not policy.probing
    t = 20.0
    while t < 20.0 + PROBE_PAUSE_AFTER_DOWN_S - 1e-9:  # the estimate carries the middle layer and rises
        t = round(t + 0.1, 1)
        policy.on_bandwidth_estimate(900_000 + 1000 * (t - 20.0), t)
        policy.decide(layers, t)
        assert not policy.probing or t >= 20.0 + PROBE_PAUSE_AFTER_DOWN_S, t
    t = round(t + 0.1, 1)
    policy.on_bandwidth_estimate(950_000, t)
    policy.decide(layers, t)
    assert policy.probing and policy.probe_target_bps == pytest.approx(HIGH * DEFAULT_HEADROOM)


def test_a_new_viewer_is_probed_toward_the_next_step_until_its_first_estimate() -> None:
    layers = make_layers()
    policy = LayerPolicy(start_spatial=1)
    assert policy.decide(layers, 0.0) == Target(1, 0)
    assert policy.probe_target_bps == pytest.approx(HIGH * DEFAULT_HEADROOM)  # blind: offer the next step
    policy.decide(layers, START_PROBE_S - 0.1)
    assert policy.probing
    policy.decide(layers, START_PROBE_S)
    assert not policy.probing  # a receiver that never reports is not padded for ever
    # Loss vetoes the start probe too.
    lossy = LayerPolicy(start_spatial=1)
    lossy.on_loss(0.2, 0.0)
    lossy.decide(layers, 0.0)
    assert not lossy.probing


def test_the_first_estimate_lifts_at_once_later_ones_climb_with_the_hold() -> None:
    layers = make_layers()
    policy = LayerPolicy(start_spatial=0)
    assert policy.decide(layers, 0.0) == Target(0, 0)
    # What the start probe showed: room for the top layer. No hold: the start was blind.
    policy.on_bandwidth_estimate(HIGH * DEFAULT_HEADROOM, 3.0)
    assert policy.decide(layers, 3.0) == Target(2, 0)
    # After a drop (past the flap window, so no backoff), climbing back is one step per hold.
    policy.on_bandwidth_estimate(200_000, 14.0)
    assert policy.decide(layers, 14.0) == Target(0, 0)
    history = run(policy, layers, UNLIMITED, 14.1, 24)
    assert first_time(history, 1) - 14.1 >= DEFAULT_UP_HOLD_S - 1e-9
    assert first_time(history, 2) - first_time(history, 1) >= DEFAULT_UP_HOLD_S - 1e-9
    # A first estimate that covers only the middle layer lifts only that far; loss vetoes it.
    middle = LayerPolicy(start_spatial=0)
    middle.decide(layers, 0.0)
    middle.on_bandwidth_estimate(MID * DEFAULT_HEADROOM, 3.0)
    assert middle.decide(layers, 3.0) == Target(1, 0)
    lossy = LayerPolicy(start_spatial=0)
    lossy.decide(layers, 0.0)
    lossy.on_loss(0.05, 1.0)
    lossy.on_bandwidth_estimate(UNLIMITED, 3.0)
    assert lossy.decide(layers, 3.0) == Target(0, 0)


# -- input checks ---------------------------------------------------------------------


def test_invalid_inputs_are_refused() -> None:
    policy = LayerPolicy()
    with pytest.raises(ValueError):
        policy.on_bandwidth_estimate(-1, 0.0)
    with pytest.raises(ValueError):
        policy.on_bandwidth_estimate(float("nan"), 0.0)
    with pytest.raises(ValueError):
        policy.on_loss(1.5, 0.0)
    with pytest.raises(ValueError):
        policy.set_requested_max(width=0)
    with pytest.raises(ValueError):
        policy.set_room_cap(-1)
    with pytest.raises(ValueError):
        LayerPolicy(headroom=0.9)
    with pytest.raises(ValueError):
        Layer(spatial=0, rid="q", bitrate_bps=1.0, temporal_layers=5)
    with pytest.raises(ValueError):
        policy.decide([Layer(0, "a", 1.0), Layer(0, "b", 2.0)], 0.0)
    with pytest.raises(ValueError):
        order_layers(["a", "a"], {}, {})


# -- order_layers ---------------------------------------------------------------------


def rids_of(layers: list[Layer]) -> list[str]:
    return [layer.rid for layer in layers]


@pytest.mark.parametrize("rids", [["q", "h", "f"], ["l", "m", "h"], ["0", "1", "2"], ["x", "y", "z"]])
def test_order_layers_by_frame_size_whatever_the_names(rids: list[str]) -> None:
    listed = [rids[2], rids[0], rids[1]]
    sizes = {rids[0]: (320, 180), rids[1]: (640, 360), rids[2]: (1280, 720)}
    bitrates = {rids[0]: 900_000.0, rids[1]: 100_000.0, rids[2]: 500_000.0}  # sizes beat bitrates
    layers = order_layers(listed, bitrates, sizes)
    assert rids_of(layers) == rids
    assert [layer.spatial for layer in layers] == [0, 1, 2]
    assert (layers[2].width, layers[2].height, layers[2].bitrate_bps) == (1280, 720, 500_000.0)


@pytest.mark.parametrize("rids", [["q", "h", "f"], ["l", "m", "h"], ["0", "1", "2"], ["x", "y", "z"]])
def test_order_layers_by_bitrate_when_sizes_are_partial(rids: list[str]) -> None:
    listed = [rids[1], rids[2], rids[0]]
    bitrates = {rids[0]: 150_000.0, rids[1]: 500_000.0, rids[2]: 1_700_000.0}
    layers = order_layers(listed, bitrates, {rids[2]: (1280, 720)})
    assert rids_of(layers) == rids
    assert layers[2].width == 1280 and layers[0].width is None


@pytest.mark.parametrize(
    "listed, expected",
    [
        (["f", "q", "h"], ["q", "h", "f"]),
        (["h", "l", "m"], ["l", "m", "h"]),
        (["H", "M", "L"], ["L", "M", "H"]),
        (["high", "low", "mid"], ["low", "mid", "high"]),
        (["2", "0", "1"], ["0", "1", "2"]),
        (["10", "2"], ["2", "10"]),
        (["r2", "r0", "r1"], ["r0", "r1", "r2"]),
        (["b", "a", "c"], ["b", "a", "c"]),  # nothing to go on: the publisher's order
        ([], []),
    ],
)
def test_order_layers_by_name_before_anything_is_measured(listed: list[str], expected: list[str]) -> None:
    bitrates = {listed[0]: 100_000.0} if listed else {}  # one measured rid is not enough to rank
    assert rids_of(order_layers(listed, bitrates, {})) == expected


# -- invariants -----------------------------------------------------------------------

layer_specs = st.lists(
    st.tuples(
        st.floats(0, 5e6),
        st.booleans(),
        st.integers(1, 4),
        st.one_of(st.none(), st.sampled_from(SIZES)),
    ),
    min_size=0,
    max_size=3,
)


@st.composite
def layer_lists(draw: st.DrawFn) -> list[Layer]:
    specs = draw(layer_specs)
    spatials = draw(st.lists(st.integers(0, 4), min_size=len(specs), max_size=len(specs), unique=True))
    return [
        Layer(spatial=s, rid=f"r{s}", bitrate_bps=bps, width=size[0] if size else None,
              height=size[1] if size else None, temporal_layers=tl, active=on)
        for s, (bps, on, tl, size) in zip(sorted(spatials), specs)
    ]


caps = st.one_of(st.none(), st.integers(0, 4))
events = st.lists(
    st.one_of(
        st.tuples(st.just("estimate"), st.floats(0, 5e6)),
        st.tuples(st.just("loss"), st.floats(0, 1)),
        st.tuples(st.just("tick"), st.floats(0, 3)),
        st.tuples(st.just("room_cap"), caps),
        st.tuples(st.just("request"), st.tuples(caps, st.one_of(st.none(), st.integers(1, 2000)))),
        st.tuples(st.just("layers"), layer_lists()),
    ),
    max_size=60,
)


def drive(start_spatial: int | None, room_cap: int | None, layers: list[Layer], script: list[tuple]) -> list:
    """Run a script; return every decision with what it must respect."""
    policy = LayerPolicy(room_max_spatial=room_cap, start_spatial=start_spatial)
    now, request = 0.0, (None, None)
    out = []
    for kind, value in script:
        if kind == "estimate":
            policy.on_bandwidth_estimate(value, now)
        elif kind == "loss":
            policy.on_loss(value, now)
        elif kind == "tick":
            now += value
        elif kind == "room_cap":
            room_cap = value
            policy.set_room_cap(value)
        elif kind == "request":
            request = value
            policy.set_requested_max(spatial=value[0], width=value[1])
        else:
            layers = value
        out.append((policy.decide(layers, now), layers, room_cap, request, policy.probing))
    return out


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(0, 4)), caps, layer_lists(), events)
def test_invariant_target_is_an_existing_active_layer_within_caps(
    start_spatial: int | None, room_cap: int | None, layers: list[Layer], script: list[tuple]
) -> None:
    out = drive(start_spatial, room_cap, layers, script)
    assert out == drive(start_spatial, room_cap, layers, script)  # deterministic
    for target, layers_now, cap, (req_spatial, req_width), _ in out:
        active = {layer.spatial: layer for layer in layers_now if layer.active}
        if not active:
            assert target is None
            continue
        assert target is not None and target.spatial in active
        assert 0 <= target.temporal < active[target.spatial].temporal_layers
        ceiling = [c for c in (cap, req_spatial) if c is not None]
        filling = [s for s, layer in active.items()
                   if req_width is not None and layer.width is not None and layer.width >= req_width]
        if filling:
            ceiling.append(min(filling))
        if ceiling and min(active) <= min(ceiling):
            assert target.spatial <= min(ceiling)
        elif ceiling:
            assert target.spatial == min(active)  # caps exclude everything: the lowest active


@settings(max_examples=300, deadline=None)
@given(
    layer_lists().filter(lambda ls: any(layer.active for layer in ls)),
    st.one_of(st.none(), st.integers(0, 4)),
    st.lists(st.tuples(st.floats(0, 5e6), st.floats(0, 3), st.one_of(st.none(), st.floats(0, 1))), max_size=60),
)
def test_invariant_a_falling_estimate_never_raises_the_target(
    layers: list[Layer], start_spatial: int | None, script: list[tuple[float, float, float | None]]
) -> None:
    policy = LayerPolicy(start_spatial=start_spatial)
    now, previous_bps = 0.0, None
    previous = policy.decide(layers, now)
    for bps, dt, loss in script:
        now += dt
        if loss is not None:
            policy.on_loss(loss, now)
        policy.on_bandwidth_estimate(bps, now)
        target = policy.decide(layers, now)
        assert target is not None and previous is not None
        if previous_bps is not None and bps < previous_bps:
            assert target <= previous
        previous, previous_bps = target, bps


@settings(max_examples=200, deadline=None)
@given(
    layer_lists().filter(lambda ls: any(layer.active for layer in ls)),
    st.lists(st.floats(0, 5e6), min_size=1, max_size=40, unique=True),
    st.floats(0.1, 3),
)
def test_invariant_a_steadily_falling_estimate_only_ever_lowers_the_target(
    layers: list[Layer], estimates: list[float], dt: float
) -> None:
    policy = LayerPolicy()
    targets = []
    for i, bps in enumerate(sorted(estimates, reverse=True)):
        policy.on_bandwidth_estimate(bps, i * dt)
        targets.append(policy.decide(layers, i * dt))
        targets.append(policy.decide(layers, i * dt + dt / 2))  # a decide with no news in between
    assert targets == sorted(targets, reverse=True)  # type: ignore[type-var]
