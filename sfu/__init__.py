"""A WebRTC selective forwarding unit: Python control, Cython packets."""

__version__ = "0.1.0"
