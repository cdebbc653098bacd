"""Listener ports come from below the ephemeral range, where connections never take a port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pilotfish.agent.ports import (
    LISTENER_PORTS_FLOOR,
    PortPicker,
    ephemeral_range_low,
    free_port,
)
from pilotfish.errors import PilotfishError


def test_a_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = ephemeral_range_low()
    ports = {free_port() for _ in range(20)}
    assert all(LISTENER_PORTS_FLOOR <= port < low for port in ports), (ports, low)
    assert len(ports) > 1, "drawn at random, twenty draws are not all one port"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports.pop()))
        listener.listen()


def test_a_port_someone_listens_on_is_never_handed_out() -> None:
    low = ephemeral_range_low()
    held = []
    try:
        # Hold a tenth of the candidates; none of them may come back.
        for port in range(LISTENER_PORTS_FLOOR, low, 10):
            held_socket = socket.socket()
            try:
                held_socket.bind(("127.0.0.1", port))
            except OSError:
                held_socket.close()
                continue
            held.append(held_socket)
        taken = {s.getsockname()[1] for s in held}
        assert not {free_port() for _ in range(50)} & taken
    finally:
        for held_socket in held:
            held_socket.close()


def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("40000\t60999\n")
    assert ephemeral_range_low(range_file) == 40000
    assert ephemeral_range_low(tmp_path / "absent") == 32768


def test_a_picker_never_gives_a_port_twice_even_when_the_draws_repeat() -> None:
    draws = iter([20001, 20001, 20002, 20001, 20003])
    picker = PortPicker(lambda: next(draws))
    assert [picker.pick(), picker.pick(), picker.pick()] == [20001, 20002, 20003]


def test_a_picker_that_only_draws_repeats_says_so() -> None:
    picker = PortPicker(lambda: 20001, attempts=3)
    assert picker.pick() == 20001
    with pytest.raises(PilotfishError, match="in 3 draws"):
        picker.pick()
