"""A MESSAGE frame goes straight to the listeners' handlers, in stomp.py's order (every
on_before_message, then every on_message, by listener name), the heartbeat listener included:
it must hear that the broker is alive while messages stream without heartbeat frames."""

from typing import Any

import stomp
from stomp.utils import Frame

from reporting.config import HostPort
from reporting.wire.connection import Connection


class Recorder(stomp.ConnectionListener):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def on_before_message(self, frame: Frame) -> None:
        self.calls.append(f"{self.name}: before {frame.headers['message-id']}")

    def on_message(self, *args: Any) -> None:
        self.calls.append(f"{self.name}: message {args[-1].headers['message-id']}")


def message(number: int) -> Frame:
    return Frame("MESSAGE", {"message-id": f"m{number}", "destination": "/queue/q"}, b"{}")


def test_messages_reach_every_listener_in_stomp_pys_order() -> None:
    calls: list[str] = []
    conn = Connection(HostPort("127.0.0.1", 1), heartbeat_ms=4000)
    conn.listener = Recorder("relayed", calls)
    conn._stomp.set_listener("b-second", Recorder("b", calls))
    conn._stomp.set_listener("a-first", Recorder("a", calls))
    heartbeats = conn._stomp.get_listener("protocol-listener")
    heartbeats.received_heartbeat = 0.0

    conn._stomp.transport.process_frame(message(1), b"")
    assert calls == [
        "a: before m1",
        "b: before m1",
        "a: message m1",
        "b: message m1",
        "relayed: message m1",
    ]
    assert heartbeats.received_heartbeat > 0.0

    # A listener added later is heard from the next message on.
    calls.clear()
    conn._stomp.set_listener("c-third", Recorder("c", calls))
    conn._stomp.transport.process_frame(message(2), b"")
    assert "c: message m2" in calls and "c: before m2" in calls


def test_other_frames_go_the_way_stomp_py_sends_them() -> None:
    calls: list[str] = []
    conn = Connection(HostPort("127.0.0.1", 1), heartbeat_ms=4000)
    listener = Recorder("x", calls)
    listener.on_receipt = lambda frame: calls.append(f"receipt {frame.headers['receipt-id']}")
    conn._stomp.set_listener("x", listener)
    conn._stomp.transport.process_frame(Frame("RECEIPT", {"receipt-id": "r1"}), b"")
    assert calls == ["receipt r1"]
