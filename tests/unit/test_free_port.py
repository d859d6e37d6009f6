"""Ports for test servers come from outside the kernel's ephemeral range, a slice per worker.

A port from bind(0) can be taken by any outgoing connection before the server that
was meant to listen on it starts; under pytest-xdist that happened to a Hub service
("address already in use"), and its test waited in vain for a cull.
"""

from __future__ import annotations

import socket

import pytest

from hubcull.testing import hub as testing_hub


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")


def pool_of(monkeypatch: pytest.MonkeyPatch, worker: str) -> range:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    return testing_hub._port_pool()


def test_the_pool_avoids_the_ephemeral_range() -> None:
    low, high = testing_hub._ephemeral_range()
    pool = testing_hub._port_pool()
    assert len(pool) >= 1000
    assert pool.stop <= low or pool.start > high


def test_each_worker_has_its_own_slice(monkeypatch: pytest.MonkeyPatch, two_workers: None) -> None:
    first, second = pool_of(monkeypatch, "gw0"), pool_of(monkeypatch, "gw1")
    assert first and second
    assert not set(first) & set(second)


def test_a_port_is_handed_out_once_and_is_bindable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing_hub, "_handed_out", set())
    ports = [testing_hub.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    pool = testing_hub._port_pool()
    assert all(p in pool for p in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_taken_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing_hub, "_handed_out", set())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        # A pool holding only that port: every try fails and the kernel picks instead.
        monkeypatch.setattr(testing_hub, "_port_pool", lambda: range(taken, taken + 1))
        assert testing_hub.free_port() != taken
