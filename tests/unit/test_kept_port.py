"""Stable local ports come from below the kernel's ephemeral range, where no outgoing
connection is ever given one, and never a port something listens on."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from shared.adapters.local.processes import free_port, kept_port, port_free


class Scripted(random.Random):
    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self.ports = ports

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        assert stop is not None and start <= self.ports[0] < stop
        return self.ports.pop(0)


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_kept_port_is_free_and_below_the_ephemeral_range() -> None:
    for seed in range(20):
        port = kept_port(random.Random(seed))
        assert 20000 <= port < _ephemeral_low()
        with socket.socket() as sock:
            # As the servers that take it do: a connection of the port's last owner in
            # TIME_WAIT (another suite's front end, say) must not make it look taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_passed_over() -> None:
    taken = kept_port(random.Random(1))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", taken))
        busy.listen()
        handed = kept_port(random.Random(2))  # handed out, not bound yet: not again
        free = next(p for p in range(20000, 30000) if p not in (taken, handed) and port_free(p))
        assert kept_port(Scripted([taken, handed, free])) == free


def test_ports_handed_out_for_revisions_are_never_the_same_twice_in_a_row() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(p >= _ephemeral_low() for p in ports)  # never where stable ports are kept
