"""Issue 4's must-shows; the harness and the tests themselves: simulcast_browser.py."""

from simulcast_browser import (  # noqa: F401
    lab,
    test_fifty_viewers_join_with_a_handful_of_keyframe_requests,
    test_viewer_steps_down_and_climbs_back,
    test_viewer_steps_down_without_freezing,
    test_viewers_settle_on_the_layer_their_link_carries,
)
