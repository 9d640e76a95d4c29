"""ReportClient against small in-process STOMP brokers: receipts, ledger, failover, resends.

The fake broker speaks just enough STOMP 1.2 (CONNECT/STOMP, SEND, DISCONNECT, RECEIPT, ERROR) and
can be told to misbehave: drop the connection after some SENDs, or never send receipts. The real
ActiveMQ runs in tests/integration/test_produce.py.
"""

import json
import random
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from reporting.config import HostPort
from reporting.errors import BrokerError
from reporting.ledger import Ledger, read_ledger
from reporting.samples import sample_report
from reporting.wire.decode import decode
from reporting.wire.producer import ReportClient
from storage.reports import KINDS, Report


@dataclass
class Frame:
    command: str
    headers: dict[str, str]
    body: bytes


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append({"c": ":", "n": "\n", "r": "\r", "\\": "\\"}[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def read_frame(sock: socket.socket, buf: bytearray) -> Frame | None:
    while True:
        while buf[:1] in (b"\n", b"\r"):  # heart-beats
            del buf[:1]
        head_end = buf.find(b"\n\n")
        if head_end >= 0:
            lines = buf[:head_end].decode().split("\n")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers.setdefault(_unescape(key), _unescape(value))
            start = head_end + 2
            if "content-length" in headers:
                end = start + int(headers["content-length"])
            else:
                end = buf.find(b"\0", start)
            if end >= 0 and len(buf) > end:
                frame = Frame(lines[0], headers, bytes(buf[start:end]))
                del buf[: end + 1]
                return frame
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        buf.extend(chunk)


def frame_bytes(command: str, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}:{v}\n" for k, v in headers.items())
    return f"{command}\n{head}\n".encode() + b"\0"


class FakeServer:
    """A listener on 127.0.0.1 that serves each client it accepts on a thread of its own."""

    connections: int  # clients accepted so far

    def _listen(self, port: int = 0) -> None:
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port = self._server.getsockname()[1]
        self._clients: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Closes the listener, cuts off the clients it accepted and waits for their threads."""
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the accept thread
        except OSError:
            pass
        self._server.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass
class FakeBroker(FakeServer):
    """One STOMP listener; `sends` keeps every SEND frame it stored (sent a receipt for)."""

    drop_after_sends: int | None = None  # close the connection on this SEND, without receipt
    receipts: bool = True
    refuse_report_ids: set[str] = field(default_factory=set)
    port: int = 0
    sends: list[Frame] = field(default_factory=list)
    seen: list[Frame] = field(default_factory=list)  # every SEND, stored or not
    connections: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listen(self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ids(self) -> list[str]:
        with self._lock:
            return [f.headers["report-id"] for f in self.sends]

    def _serve(self, client: socket.socket) -> None:
        buf = bytearray()
        with client:
            while (frame := read_frame(client, buf)) is not None:
                reply = self._handle(frame)
                if reply is None:
                    break
                if reply:
                    client.sendall(reply)
                if frame.command == "DISCONNECT":
                    break

    def _handle(self, frame: Frame) -> bytes | None:
        if frame.command in ("CONNECT", "STOMP"):
            return frame_bytes("CONNECTED", {"version": "1.2", "heart-beat": "0,0"})
        receipt = frame.headers.get("receipt")
        if frame.command == "SEND":
            with self._lock:
                self.seen.append(frame)
                if self.drop_after_sends is not None and len(self.seen) >= self.drop_after_sends:
                    self.drop_after_sends = None
                    return None
                if frame.headers.get("report-id") in self.refuse_report_ids:
                    return frame_bytes("ERROR", {"message": "refused", "receipt-id": receipt})
                self.sends.append(frame)
            if not self.receipts:
                return b""
        return frame_bytes("RECEIPT", {"receipt-id": receipt}) if receipt else b""


@pytest.fixture
def brokers():
    started: list[FakeBroker] = []

    def start(**kwargs) -> FakeBroker:
        broker = FakeBroker(**kwargs)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def dead_host() -> str:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_send_waits_for_the_receipt_and_writes_the_ledger(brokers, tmp_path):
    broker = brokers()
    ledger = tmp_path / "ledger"
    with ReportClient([broker.host], ledger=ledger) as client:
        report = sample_report("cdr", random.Random(1))
        report_id = client.send("cdr", report, report_id="cdr-1")
        assert report_id == "cdr-1"
        # in_flight=0: the receipt is in and the id is in the ledger when send returns
        assert ledger.read_text() == "cdr-1\n"
    (frame,) = broker.sends
    assert frame.headers["destination"] == "/queue/gvp.reporting.cdr"
    assert frame.headers["persistent"] == "true"
    assert frame.headers["report-id"] == "cdr-1"
    assert json.loads(frame.body) == report


def test_windowed_sends_all_reach_the_ledger_once(brokers, tmp_path):
    broker = brokers()
    rng = random.Random(2)
    with ReportClient([broker.host], ledger=tmp_path / "ledger", in_flight=16) as client:
        ids = [client.send(kind, sample_report(kind, rng)) for kind in KINDS * 25]
    contents = read_ledger(tmp_path / "ledger")
    assert contents.ids == set(ids) and contents.lines == 100
    assert sorted(broker.ids()) == sorted(ids)
    assert client.stats.confirmed == 100 and client.stats.resent == 0


def test_a_dead_first_host_is_skipped(brokers):
    broker = brokers()
    with ReportClient([dead_host(), broker.host]) as client:
        client.send("or", sample_report("or", random.Random(3)), report_id="or-1")
        assert client.current_host == broker.host
    assert broker.ids() == ["or-1"]


def test_connection_lost_mid_window_resends_unconfirmed_with_the_same_ids(brokers, tmp_path):
    primary = brokers(drop_after_sends=7)
    backup = brokers()
    ledger = tmp_path / "ledger"
    rng = random.Random(4)
    with ReportClient([primary.host, backup.host], ledger=ledger, in_flight=4) as client:
        ids = [client.send("sq", sample_report("sq", rng), report_id=f"sq-{i}") for i in range(20)]
        assert client.current_host == backup.host
    assert client.stats.failovers == 1 and client.stats.resent >= 1
    # Every report confirmed by one broker or the other, each id in the ledger exactly once.
    assert set(primary.ids()) | set(backup.ids()) == set(ids)
    contents = read_ledger(ledger)
    assert contents.ids == set(ids) and contents.lines == len(ids)
    # The frame the primary dropped went to the backup under its own id.
    dropped = primary.seen[6].headers["report-id"]
    assert dropped not in primary.ids() and dropped in backup.ids()


def test_missing_receipt_times_out_and_fails_over(brokers, tmp_path):
    silent = brokers(receipts=False)
    backup = brokers()
    with ReportClient(
        [silent.host, backup.host], ledger=tmp_path / "ledger", receipt_timeout_s=0.3
    ) as client:
        client.send("events", sample_report("events", random.Random(5)), report_id="ev-1")
    assert silent.ids() == ["ev-1"]  # stored there without a receipt: a duplicate to the server
    assert backup.ids() == ["ev-1"]
    assert read_ledger(tmp_path / "ledger").lines == 1


def test_fails_back_to_the_first_host_when_it_answers_again(brokers):
    backup = brokers()
    primary_host = dead_host()
    primary_port = HostPort.parse(primary_host).port
    with ReportClient([primary_host, backup.host], failback_s=0.0) as client:
        client.send("cdr", sample_report("cdr", random.Random(6)), report_id="c-1")
        assert client.current_host == backup.host
        primary = brokers(port=primary_port)
        client.send("cdr", sample_report("cdr", random.Random(7)), report_id="c-2")
        assert client.current_host == primary.host
    assert backup.ids() == ["c-1"] and primary.ids() == ["c-2"]


def test_a_refused_report_is_not_in_the_ledger(brokers, tmp_path):
    broker = brokers(refuse_report_ids={"bad"})
    with ReportClient([broker.host], ledger=tmp_path / "ledger", in_flight=0) as client:
        client.send("cdr", sample_report("cdr", random.Random(8)), report_id="bad")
        client.send("cdr", sample_report("cdr", random.Random(9)), report_id="good")
    assert client.stats.refused == [("bad", "refused")]
    assert read_ledger(tmp_path / "ledger").ids == {"good"}


def test_unledgered_sends_are_kept_apart(brokers, tmp_path):
    broker = brokers()
    with ReportClient([broker.host], ledger=tmp_path / "ledger") as client:
        client.send_raw("/queue/gvp.reporting.cdr", b"\xff", report_id="x-1", ledger=False)
        client.send_raw("/queue/gvp.reporting.or", b"{}", report_id=None, ledger=False)
    assert client.confirmed_unledgered == ["x-1", ""]
    assert read_ledger(tmp_path / "ledger").lines == 0
    assert "report-id" not in broker.sends[1].headers


def test_no_broker_at_all_raises_after_the_reconnect_timeout():
    client = ReportClient([dead_host(), dead_host()], reconnect_timeout_s=0.3)
    with pytest.raises(BrokerError, match="no broker answered"):
        client.send("cdr", sample_report("cdr", random.Random(10)))
    client.close()


def test_reports_go_to_the_configured_queue_of_their_kind(brokers):
    broker = brokers()
    queues = ["site1.gvp.reporting.cdr", "site1.gvp.reporting.sq"]
    with ReportClient([broker.host], queues=queues) as client:
        client.send("sq", sample_report("sq", random.Random(12)), report_id="s-1")
        with pytest.raises(ValueError, match="no queue for reports of kind 'or'"):
            client.send("or", sample_report("or", random.Random(12)))
    assert broker.sends[0].headers["destination"] == "/queue/site1.gvp.reporting.sq"
    with pytest.raises(BrokerError, match="does not end in"):
        ReportClient([broker.host], queues=["gvp.reporting.nope"])


def test_bad_host_is_a_clear_error():
    with pytest.raises(BrokerError, match="host:port"):
        ReportClient(["localhost"])


def test_ledger_skips_a_torn_last_line_and_counts_repeats(tmp_path):
    path = tmp_path / "ledger"
    ledger = Ledger(path)
    ledger.append(["a", "b", "a"])
    ledger.close()
    with path.open("a") as fh:
        fh.write("tor")
    contents = read_ledger(path)
    assert contents.ids == {"a", "b"} and contents.lines == 3 and contents.repeated_lines == 1


def test_produce_command_writes_ledger_and_rejected_ids(brokers, tmp_path, capsys):
    from reporting.cli import main
    from reporting.commands.produce import malformed_messages

    broker = brokers()
    ledger = tmp_path / "ledger"
    argv = ["produce", "--broker", f"{dead_host()},{broker.host}", "--count", "40"]
    argv += ["--malformed", "8", "--ledger", str(ledger), "--seed", "7", "--max-body-bytes", "256"]
    argv += ["--queue-prefix", "site9."]
    assert main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("produced 40 reports (cdr 10 or 10 sq 10 events 10)")
    assert "malformed 8 (1 to an unconsumed queue)" in summary and "seed 7" in summary
    good = read_ledger(ledger)
    assert good.lines == 40 and len(good.ids) == 40
    rejected = read_ledger(f"{ledger}.rejected")
    assert rejected.lines == 7 and all(i.startswith("malformed-") for i in rejected.ids)
    assert len(broker.sends) == 48
    # Each bad message would be rejected by the server's decode, for the reason it was built for.
    by_id = {f.headers["report-id"]: f for f in broker.sends}
    queues = tuple(f"site9.gvp.reporting.{kind}" for kind in KINDS)
    assert {f.headers["destination"] for f in broker.sends} == {f"/queue/{q}" for q in queues} | {
        "/queue/site9.gvp.reporting.unknown"
    }
    for message in malformed_messages(256, dict(zip(KINDS, queues, strict=True))):
        (frame,) = [f for i, f in by_id.items() if i.startswith(f"malformed-{message.name}-")]
        item = decode(
            frame.headers["destination"],
            frame.headers,
            frame.body,
            queues=queues,
            max_body_bytes=256,
            now=datetime.now(UTC),
        )
        assert not isinstance(item, Report), message.name


def test_produce_rejects_an_unknown_kind(capsys):
    from reporting.cli import main

    assert main(["produce", "--broker", "127.0.0.1:1", "--kinds", "cdr,xyz"]) == 2
    assert "--kinds" in capsys.readouterr().err
