"""Active speaker decisions from reported levels."""

from __future__ import annotations

from sfu.signalling.active_speaker import HOLD_S, ActiveSpeakers


def make():
    changes: list[tuple[str, str]] = []
    return ActiveSpeakers(lambda room, stream, level: changes.append((room, stream))), changes


def test_first_voice_in_a_silent_room_is_the_speaker_at_once():
    speakers, changes = make()
    speakers.report("r", {"a": (-20.0, 0.0), "b": (-127.0, 0.0)}, 0.0)
    assert changes == [("r", "a")]
    assert speakers.order("r") == ["a"]


def test_a_new_speaker_must_lead_for_the_hold_time():
    speakers, changes = make()
    speakers.report("r", {"a": (-20.0, 0.0)}, 0.0)
    speakers.report("r", {"a": (-40.0, 0.0), "b": (-15.0, 0.0)}, 1.0)
    assert changes == [("r", "a")]  # b leads, not long enough yet
    speakers.report("r", {"a": (-20.0, 0.0), "b": (-30.0, 0.0)}, 1.5)  # a back on top: b's lead is lost
    speakers.report("r", {"b": (-15.0, 0.0)}, 2.0)
    speakers.report("r", {"b": (-15.0, 0.0)}, 2.0 + HOLD_S / 2)
    assert changes == [("r", "a")]
    speakers.report("r", {"b": (-15.0, 0.0)}, 2.0 + HOLD_S)
    assert changes == [("r", "a"), ("r", "b")]
    assert speakers.order("r") == ["b", "a"]


def test_background_noise_is_nobody_speaking():
    speakers, changes = make()
    speakers.report("r", {"a": (-60.0, 0.0), "b": (-70.0, 0.0)}, 0.0)
    assert changes == [] and speakers.order("r") == []


def test_voice_activity_bit_outweighs_a_louder_noise():
    speakers, changes = make()
    speakers.report("r", {"typing": (-25.0, 0.0), "talker": (-30.0, 1.0)}, 0.0)
    assert changes == [("r", "talker")]


def test_rooms_are_independent_and_leavers_are_forgotten():
    speakers, changes = make()
    speakers.report("x", {"a": (-20.0, 0.0)}, 0.0)
    speakers.report("y", {"b": (-20.0, 0.0)}, 0.0)
    assert sorted(changes) == [("x", "a"), ("y", "b")]
    speakers.forget("x", "a")
    assert speakers.order("x") == []
    speakers.report("x", {"c": (-20.0, 0.0)}, 0.1)  # a silent room again: no hold
    assert changes[-1] == ("x", "c")
