"""Issue 4 must-shows that pass today; the harness and the pending one: simulcast_browser.py."""

from simulcast_browser import (  # noqa: F401
    lab,
    test_fifty_viewers_join_with_a_handful_of_keyframe_requests,
    test_viewer_steps_down_and_climbs_back,
    test_viewers_settle_on_the_layer_their_link_carries,
)
