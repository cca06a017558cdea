"""The suite's network guard really refuses outside connections (so a green run means no downloads)."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NetworkAccessError


def test_outside_connections_are_refused() -> None:
    """A connection to a public address raises ``NetworkAccessError`` during tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(NetworkAccessError):
        sock.connect(("93.184.216.34", 443))


def test_loopback_is_still_allowed() -> None:
    """Loopback connections (DDP's process group, local servers) still work under the guard."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())
