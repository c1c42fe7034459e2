"""Placement decisions, from shard states alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu import control
from sfu.signalling.placement import ShardState, is_full, place_publisher, place_viewer


def load(cpu: float, consumers: int, pps: float = 0.0) -> control.LoadReport:
    return control.LoadReport(shard_id=0, transports=0, consumers=consumers, packets_in_per_s=0.0,
                              packets_out_per_s=pps, cpu=cpu)


def shard(i: int, *, viewers: int = 0, consumers: int | None = None, cpu: float | None = None,
          reported_consumers: int | None = None, available: bool = True, pps: float = 0.0) -> ShardState:
    consumers = 2 * viewers if consumers is None else consumers
    report = None if cpu is None else load(cpu, consumers if reported_consumers is None else reported_consumers, pps)
    return ShardState(id=i, available=available, viewers=viewers, sessions=viewers, consumers=consumers,
                      load=report)


def test_viewers_stay_home_until_it_is_full():
    shards = [shard(0, viewers=1), shard(1)]
    assert place_viewer(shards, 0, set(), max_cpu=0.75, max_viewers=2) == 0
    shards = [shard(0, viewers=2), shard(1)]
    assert place_viewer(shards, 0, set(), max_cpu=0.75, max_viewers=2) == 1


def test_spill_prefers_a_shard_already_carrying_the_room():
    shards = [shard(0, viewers=5), shard(1, viewers=1, cpu=0.3, pps=5000), shard(2)]
    assert place_viewer(shards, 0, {1}, max_cpu=0.75, max_viewers=5) == 1
    assert place_viewer(shards, 0, set(), max_cpu=0.75, max_viewers=5) == 2


def test_cpu_report_is_extrapolated_to_viewers_placed_since():
    # Reported 0.5 CPU with 100 consumers; 60 more placed since: 0.8 > 0.75 -> full.
    busy = shard(0, consumers=160, reported_consumers=100, cpu=0.5)
    assert busy.estimated_cpu() == 0.8
    assert is_full(busy, 0.75, 0)
    assert place_viewer([busy, shard(1)], 0, set(), max_cpu=0.75, max_viewers=0) == 1


def test_a_quiet_shard_is_not_called_full_by_its_fixed_cost():
    quiet = shard(0, consumers=30, reported_consumers=2, cpu=0.05)
    assert quiet.estimated_cpu() == 0.05


def test_when_everything_is_full_the_least_loaded_still_takes_the_viewer():
    shards = [shard(0, viewers=9, cpu=0.9, reported_consumers=18), shard(1, viewers=9, cpu=0.8, reported_consumers=18)]
    assert place_viewer(shards, 0, set(), max_cpu=0.75, max_viewers=0) == 1


def test_unavailable_shards_are_never_chosen():
    shards = [shard(0, available=False), shard(1, viewers=50, cpu=0.99, reported_consumers=100)]
    assert place_viewer(shards, 0, set(), max_cpu=0.75, max_viewers=10) == 1
    assert place_publisher(shards) == 1
    assert place_viewer([shard(0, available=False)], 0, set(), max_cpu=0.75, max_viewers=0) is None
    assert place_publisher([shard(0, available=False)]) is None


def test_publisher_goes_to_the_least_busy():
    shards = [shard(0, cpu=0.2, pps=9000), shard(1, cpu=0.1, pps=1000)]
    assert place_publisher(shards) == 1


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.none() | st.floats(0, 1.5)), min_size=1, max_size=6),
       st.integers(0, 5), st.integers(0, 10))
def test_a_viewer_always_lands_on_an_available_shard(specs, home, max_viewers):
    shards = [shard(i, available=a, viewers=v, cpu=c) for i, (a, v, c) in enumerate(specs)]
    chosen = place_viewer(shards, home, set(), max_cpu=0.75, max_viewers=max_viewers)
    if not any(s.available for s in shards):
        assert chosen is None
    else:
        assert chosen is not None and shards[chosen].available
        if home < len(shards) and shards[home].available and not is_full(shards[home], 0.75, max_viewers):
            assert chosen == home
