import random
import socket

from reporting.harness import ports
from reporting.harness.ports import LOOPBACK, LOWEST, ephemeral_range, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_are_not_handed_out_twice() -> None:
    low, _high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(LOWEST <= port < low for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, ports[-1]))


def test_seeding_the_random_module_does_not_repeat_ports() -> None:
    random.seed(42)
    first = free_port()
    random.seed(42)
    assert free_port() != first


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind((LOOPBACK, 0))
        held.listen()
        taken = held.getsockname()[1]
        # The draw comes up with the held port first, then with one nobody holds.
        draws = iter([taken, taken, LOWEST + 7])
        monkeypatch.setattr(
            ports, "_random", type("Draws", (), {"randrange": lambda *_: next(draws)})()
        )
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (65000, 65535))
        monkeypatch.setattr(ports, "_handed", set())
        assert free_port() == LOWEST + 7


def test_xdist_workers_draw_from_disjoint_shares(monkeypatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    shares = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(ports.share(LOWEST, 32768))
    (a_low, a_high), (b_low, b_high) = shares
    assert LOWEST == a_low < a_high <= b_low < b_high <= 32768
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert ports.share(LOWEST, 32768) == (LOWEST, 32768)
