"""Tests for anomalib-ext; they run offline (an autouse fixture refuses non-loopback connections)."""
