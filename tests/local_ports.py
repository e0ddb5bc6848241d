"""A free TCP port on the loopback for a test's process group: tests run side by side under pytest-xdist, and two
groups on torch's default port (29500) collide (``EADDRINUSE``). The documented commands keep the default, as typed."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out as free on 127.0.0.1 (released again for the caller's group to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
