"""Issue 4 must-shows that pass today; the harness and the pending ones: simulcast_browser.py."""

from simulcast_browser import test_fifty_viewers_join_with_a_handful_of_keyframe_requests  # noqa: F401
