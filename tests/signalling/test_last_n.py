"""Last-N slot assignment."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu.signalling.last_n import assign


def apply(slots, moves):
    shown = dict(slots)
    for slot, track in moves:
        shown[slot] = track
    return shown


def test_only_slots_showing_unwanted_tracks_move():
    slots = [("s1", "a"), ("s2", "b"), ("s3", "c")]
    assert assign(slots, ["d", "a", "b"]) == [("s3", "d")]
    assert assign(slots, ["a", "b", "c"]) == []


def test_fewer_wanted_than_slots_leaves_the_rest_alone():
    assert assign([("s1", "a"), ("s2", "b")], ["c"]) == [("s1", "c")]


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True),
       st.lists(st.sampled_from("abcdefgh"), max_size=6, unique=True))
def test_after_the_moves_every_wanted_track_that_fits_is_shown(showing, wanted):
    slots = [(f"s{i}", t) for i, t in enumerate(showing)]
    wanted = wanted[:len(slots)]
    moves = assign(slots, wanted)
    shown = apply(slots, moves)
    assert set(wanted) <= set(shown.values())
    # A slot already showing a wanted track is never touched.
    assert all(dict(slots)[slot] not in wanted for slot, _ in moves)
    assert len(moves) == len(set(wanted) - set(showing))
