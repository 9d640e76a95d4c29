"""The harness servers against their real protocols: durability across kill -9, faults, cleanup."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
import stomp
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from reporting.harness import ActiveMQ, MariaDB, Postgres, TcpProxy, ZooKeeper, probes, processes
from reporting.harness.waiting import wait_until

pytestmark = pytest.mark.integration


def test_postgres_row_survives_kill_of_postmaster(postgres: Postgres, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with postgres.connect(database) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('committed before kill')")
        conn.commit()
    postmaster = postgres.pid
    os.kill(postmaster, signal.SIGKILL)
    # The backends notice the postmaster's death and exit on their own.
    assert processes.wait_group_gone(postmaster, timeout_s=20)
    postgres.restart()
    assert postgres.pid != postmaster
    with postgres.connect(database) as conn:
        rows = conn.execute("SELECT v FROM kept").fetchall()
    assert rows == [("committed before kill",)]


def test_postgres_pause_blocks_queries_and_resume_releases_them(postgres: Postgres) -> None:
    postgres.pause()
    try:
        assert postgres.is_paused()
        with pytest.raises(psycopg.OperationalError):
            postgres.connect(timeout_s=1)
    finally:
        postgres.resume()
    with postgres.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pg_url_gives_each_test_its_own_database(postgres: Postgres, pg_url: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    assert pg_url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/{database}"
    with postgres.connect(database) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_mariadb_row_survives_kill_and_each_test_has_its_own_database(
    mariadb: MariaDB, maria_url: str
) -> None:
    database = maria_url.rsplit("/", 1)[1].split("?")[0]
    assert maria_url == f"mysql+pymysql://root@127.0.0.1:{mariadb.port}/{database}?charset=utf8mb4"
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE TABLE `{database}`.t (v VARCHAR(10)) ENGINE=InnoDB")
        cursor.execute(f"INSERT INTO `{database}`.t VALUES ('kept')")
        cursor.execute(
            f"SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA"
            f" WHERE SCHEMA_NAME = '{database}'"
        )
        assert cursor.fetchone() == ("utf8mb4",)
    server = mariadb.pid
    mariadb.kill()
    assert not probes.mariadb_ready(mariadb.port)
    mariadb.restart()
    assert mariadb.pid != server
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT v FROM `{database}`.t")
        assert cursor.fetchall() == (("kept",),)


def test_servers_left_running_are_stopped_when_the_interpreter_exits(tmp_path) -> None:
    script = (
        "import sys\n"
        "from reporting.harness import Postgres\n"
        f"pg = Postgres({str(tmp_path / 'pg')!r})\n"
        "pg.start()\n"
        "print(pg.pid, flush=True)\n"
        "raise SystemExit('exit without stopping')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while processes.group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes.group_members(pid) == []


class _Inbox(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: list[stomp.utils.Frame] = []
        self.arrived = threading.Event()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.messages.append(frame)
        self.arrived.set()


def _stomp_connection(broker: ActiveMQ) -> stomp.Connection:
    conn = stomp.Connection([("127.0.0.1", broker.stomp_port)], reconnect_attempts_max=1)
    conn.connect(wait=True)
    return conn


def test_persistent_message_with_receipt_survives_broker_kill(activemq: ActiveMQ) -> None:
    queue = f"/queue/harness.{uuid.uuid4().hex}"
    producer = _stomp_connection(activemq)
    receipt = f"r-{uuid.uuid4().hex}"
    receipted = threading.Event()
    producer.set_listener("", _ReceiptListener(receipt, receipted))
    producer.send(queue, body='{"n": 1}', headers={"persistent": "true", "receipt": receipt})
    assert receipted.wait(10), "no RECEIPT for the persistent SEND"
    producer.disconnect()

    activemq.kill()
    activemq.restart()

    consumer = _stomp_connection(activemq)
    inbox = _Inbox()
    consumer.set_listener("", inbox)
    consumer.subscribe(queue, id="1", ack="client-individual")
    assert inbox.arrived.wait(15), "message lost across kill -9 and restart"
    frame = inbox.messages[0]
    assert frame.body == '{"n": 1}'
    consumer.ack(frame.headers["message-id"], "1")
    consumer.disconnect()


class _ReceiptListener(stomp.ConnectionListener):
    def __init__(self, receipt: str, event: threading.Event) -> None:
        self.receipt = receipt
        self.event = event

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        if frame.headers.get("receipt-id") == self.receipt:
            self.event.set()


def test_queue_depth_counts_unacknowledged_messages(activemq: ActiveMQ) -> None:
    name = f"harness.depth.{uuid.uuid4().hex}"
    assert activemq.queue_depth(name) == 0
    conn = _stomp_connection(activemq)
    for n in range(3):
        conn.send(f"/queue/{name}", body=str(n), headers={"persistent": "true"})
    wait_until(lambda: activemq.queue_depth(name) == 3, 10, "3 on the queue")
    inbox = _Inbox()
    conn.set_listener("", inbox)
    conn.subscribe(
        f"/queue/{name}", id="1", ack="client-individual", headers={"activemq.prefetchSize": "1"}
    )
    assert inbox.arrived.wait(10)
    # Delivered but not acknowledged: still on the queue.
    assert activemq.queue_depth(name) == 3
    conn.ack(inbox.messages[0].headers["message-id"], "1")
    wait_until(lambda: activemq.queue_depth(name) == 2, 10, "2 on the queue")
    conn.disconnect()


def test_activemq_pause_and_resume(activemq: ActiveMQ) -> None:
    activemq.pause()
    try:
        assert not probes.stomp_ready(activemq.stomp_port)
    finally:
        activemq.resume()
    assert probes.stomp_ready(activemq.stomp_port)


def test_ephemeral_node_disappears_when_the_session_is_lost(
    zookeeper: ZooKeeper, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    path = f"/harness-{uuid.uuid4().hex}/holder"
    holder = KazooClient(hosts=proxy.host, timeout=1.0)
    observer = KazooClient(hosts=zookeeper.hosts, timeout=5.0)
    holder.start(timeout=10)
    observer.start(timeout=10)
    states: list[KazooState] = []
    holder.add_listener(states.append)
    try:
        holder.create(path, b"me", ephemeral=True, makepath=True)
        assert observer.exists(path) is not None

        proxy.blackhole()
        wait_until(lambda: observer.exists(path) is None, 15, "the node gone")
        assert KazooState.SUSPENDED in states
        proxy.heal()
        wait_until(lambda: KazooState.LOST in states, 15, "the session lost")
    finally:
        proxy.heal()
        holder.stop()
        holder.close()
        observer.stop()
        observer.close()


def test_zookeeper_pause_and_resume(zookeeper: ZooKeeper) -> None:
    zookeeper.pause()
    try:
        with pytest.raises(OSError):
            probes.zookeeper_command(zookeeper.port, "ruok", timeout_s=1)
    finally:
        zookeeper.resume()
    assert zookeeper.command("ruok") == "imok"


def test_proxy_blackhole_times_a_client_out_and_heal_restores_it(
    zookeeper: ZooKeeper, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    assert probes.zookeeper_command(proxy.port, "ruok") == "imok"
    proxy.blackhole()
    with pytest.raises(TimeoutError):
        probes.zookeeper_command(proxy.port, "ruok", timeout_s=1)
    proxy.heal()
    assert probes.zookeeper_command(proxy.port, "ruok") == "imok"


def test_proxy_delay_adds_latency(
    zookeeper: ZooKeeper, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = tcp_proxy("127.0.0.1", zookeeper.port)
    proxy.delay(0.5)
    started = time.monotonic()
    assert probes.zookeeper_command(proxy.port, "ruok", timeout_s=5) == "imok"
    # Once on the way in, once on the way out.
    assert time.monotonic() - started >= 1.0


def test_proxy_reset_drops_current_connections(
    activemq: ActiveMQ, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    proxy = tcp_proxy("127.0.0.1", activemq.stomp_port)
    session = probes.StompSession("127.0.0.1", proxy.port, timeout_s=5)
    proxy.reset()
    with pytest.raises((ConnectionError, OSError)):
        session.send_frame("SEND", {"destination": "/queue/harness.reset"}, b"x")
        session.read_frame()
    session.close()
    assert probes.stomp_ready(proxy.port)
