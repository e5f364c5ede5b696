"""free_port: the loopback ports `searchrl up`, the judge server and the tests pre-pick for servers started a
little later. A port inside the kernel's ephemeral range can be taken in between by any process's bind(0) or
outgoing connection (a CI run of `searchrl up` lost the trainer's health port to vLLM's start-up that way), so
ports come from below that range, each bindable, never twice in one process."""

from __future__ import annotations

import socket

from searchrl import redisio
from searchrl.redisio import ephemeral_low, free_port


def test_ports_lie_below_the_ephemeral_range_are_free_and_distinct() -> None:
    low = ephemeral_low()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), (low, sorted(ports)[-5:])
    for p in ports[:20]:
        with socket.socket() as s:
            s.bind(("", p))  # free on every interface


def test_a_bind_to_port_zero_never_gets_a_port_just_handed_out() -> None:
    ours = {free_port() for _ in range(50)}
    for _ in range(200):  # what vLLM's rendezvous sockets do while our servers start
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            assert s.getsockname()[1] not in ours


def test_without_room_below_the_range_it_falls_back_to_the_kernels_choice(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(redisio, "ephemeral_low", lambda: 1024)
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(p >= 1024 for p in ports)
