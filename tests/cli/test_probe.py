from __future__ import annotations

import socket

from services.cli.probe import port_in_use


def test_a_port_with_a_listener_is_in_use_and_a_released_one_is_not() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        assert port_in_use("localhost", port)
    assert not port_in_use("127.0.0.1", port)


def test_port_zero_is_never_in_use() -> None:
    assert not port_in_use("127.0.0.1", 0)
