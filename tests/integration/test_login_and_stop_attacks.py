"""Attacks from outside on two changes: the broker login sent escaped in CONNECT, and the
election's stop() that no longer waits for the ZooKeeper client while cut off.

Login: broker users and passwords of the characters ActiveMQ's header unescaping, logging, JSON,
repr and URL quoting touch, given by `password_file` and `password_env`, to `run`, `check-config`,
the producer client and the `produce` command. The right password logs in and reports flow
exactly once; a password that differs from the right one only by escaping is refused with one
line; one ActiveMQ would read as another (a line break, blanks around it, too long once escaped)
is refused by its config key before it is sent; no spelling of a password shows in a DEBUG log
(text or JSON), /status, /metrics or the database.

Stop: SIGTERM of a pair's instance cut off from ZooKeeper (a dark TCP path, or ZooKeeper itself
stopped with SIGSTOP), of a cut-off standby, at the moment the path heals, and of a connected
active (the hand-over stays quick). Each exits promptly and cleanly, no two actives in shared
mode, the peer takes over, every receipted report stored once.
"""

import json
import os
import random
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from reporting.errors import BrokerError
from reporting.harness import ActiveMQ
from reporting.harness.activemq import PRODUCER, SERVER
from reporting.harness.flow import Flow, assert_exactly_once
from reporting.harness.instance import Instance, to_toml
from reporting.harness.pair import Pair, roles
from reporting.harness.ports import free_port
from reporting.harness.waiting import wait_until
from reporting.wire.login import connect_value
from reporting.wire.producer import ReportClient
from storage.reports import KINDS

pytestmark = pytest.mark.integration

# -- the broker's users --------------------------------------------------------------------------

TAG = uuid.uuid4().hex[:6]
# The harness probes the broker as its first user: a plain one.
PLAIN_USER, PLAIN_PW = "plain", f"plain-{TAG}"
# A backslash before letters STOMP escapes and before ones it does not, colons, a percent
# escape, both quotes, characters beyond ASCII, inner spaces and a trailing backslash.
RUN_USER, RUN_PW = "reporting", f"\\a\\b\\c\\d\\n\\r\\t\\u00e9\\\\:%41%\"q'Ü✓ sp{TAG} \\"
# A user name of the same kind.
ODD_USER, ODD_PW = f"rs\\c:ü {TAG}", f"o\\cdd:\\\\{TAG}\\"
PRODUCER_USER, PRODUCER_PW = "producer", f"P\\c:\\\\ü\"'%20 {TAG}\\n\\"
# Passwords that are equal to another only once escapes are undone: (user, right, tried).
ESCAPE_TWINS = [
    ("esc-c", f"E{TAG}\\cQ", f"E{TAG}:Q"),  # right holds \c, tried holds the colon it escapes
    ("esc-colon", f"F{TAG}:Q", f"F{TAG}\\cQ"),  # and the other way round
    ("esc-slashes", f"G{TAG}\\\\Q", f"G{TAG}\\Q"),  # two backslashes, tried one
    ("esc-n", f"H{TAG}\\nQ", f"H{TAG}\nQ"),  # backslash n, tried a newline (by env)
]
# Backslash r, tried a carriage return: ActiveMQ 5.17 undoes \r only once STOMP 1.2 is agreed,
# which CONNECT has not yet done, so an escaped carriage return would arrive as backslash r. A
# line break in a broker credential is refused by its key instead, like a newline.
CR_TWIN = ("esc-r", f"J{TAG}\\rQ", f"J{TAG}\rQ")
# Leading and trailing blanks (only an environment variable can carry them: a file is stripped).
PADDED_USER, PADDED_PW = "padded", f"  pad{TAG}  "
# Long: 4,000 characters of every escaped kind (escaped: 5,000 bytes).
LONG_USER, LONG_PW = "long", (f"L\\c:{TAG}" * 400)[:4000]
# Colons, which the login carries as they are: 5,400 bytes of a 10,240-byte header line.
COLONS_USER, COLONS_PW = "colons", ":" * 5000 + f"{TAG}" * 50

USERS = {
    PLAIN_USER: (PLAIN_PW, SERVER),
    RUN_USER: (RUN_PW, SERVER),
    ODD_USER: (ODD_PW, SERVER),
    PRODUCER_USER: (PRODUCER_PW, PRODUCER),
    PADDED_USER: (PADDED_PW, SERVER),
    LONG_USER: (LONG_PW, SERVER),
    COLONS_USER: (COLONS_PW, SERVER),
    **{user: (right, SERVER) for user, right, _ in [*ESCAPE_TWINS, CR_TWIN]},
}
ALL_PASSWORDS = [password for password, _ in USERS.values()] + [
    tried for _, _, tried in [*ESCAPE_TWINS, CR_TWIN]
]


@pytest.fixture(scope="module")
def awkward_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActiveMQ]:
    broker = ActiveMQ(tmp_path_factory.mktemp("awkward-activemq"), users=USERS)
    broker.start()
    yield broker
    broker.stop()


def spellings(password: str) -> set[str]:
    """The password as written and as every escape a log line, a JSON document, a URL or a STOMP
    frame (and a repr of that) could give it."""
    stomp = connect_value(password)
    stomp_12 = (
        password.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace(":", "\\c")
    )
    forms = {
        password,
        stomp,
        stomp_12,
        repr(password)[1:-1],
        repr(stomp)[1:-1],
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        json.dumps(stomp)[1:-1],
        json.dumps(stomp, ensure_ascii=False)[1:-1],
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote_plus(password),
        password.encode("unicode_escape").decode(),
        repr(password.encode())[2:-1],
    }
    # Passwords with blanks around them: the trimmed form too, as a broker would see it.
    forms.add(password.strip())
    return {form for form in forms if len(form) >= 6}


def leaks(where: str, content: str, passwords: list[str] = ALL_PASSWORDS) -> list[str]:
    return [
        f"{where}: {password[:12]!r}... as {form[:40]!r}"
        for password in passwords
        for form in spellings(password)
        if form in content
    ]


def secret_file(path: Path, value: str) -> str:
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


def standalone_config(
    name: str,
    workdir: Path,
    broker: ActiveMQ,
    db_url: str,
    queues: list[str],
    **broker_keys: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "ha": {"mode": "standalone"},
        "broker": {"hosts": [broker.host], "queues": queues, "heartbeat_ms": 1000, **broker_keys},
        "database": {"url": db_url},
        "journal": {"dir": str(workdir / name / "journal")},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
    }


class Command(subprocess.Popen):
    """A command run in the background, its stdout and stderr in files (a pipe left unread
    would stall a chatty DEBUG run)."""

    def output(self) -> tuple[str, str]:
        return tuple(Path(f.name).read_text(errors="replace") for f in self.files)


def cli(
    *argv: str, env: dict[str, str] | None = None, log: tuple[str, str] = ("DEBUG", "text")
) -> Command:
    """`python -m reporting.cli ARGV --log-level L --log-format F`, started, not waited for."""
    out = tempfile.NamedTemporaryFile("w", prefix="rs-out-", delete=False)
    err = tempfile.NamedTemporaryFile("w", prefix="rs-err-", delete=False)
    command = Command(
        [sys.executable, "-m", "reporting.cli", *argv]
        + ["--log-level", log[0], "--log-format", log[1]],
        stdout=out,
        stderr=err,
        env=os.environ | (env or {}),
    )
    out.close()
    err.close()
    command.files = (out, err)
    return command


def finished(process: Command, timeout_s: float = 90) -> tuple[int, str, str]:
    process.wait(timeout=timeout_s)
    out, err = process.output()
    for f in process.files:
        os.unlink(f.name)
    return process.returncode, out, err


def all_finished(processes: list[Command], timeout_s: float) -> list[tuple[int | None, str, str]]:
    """Each process's (exit code, stdout, stderr), side by side; one still running after
    `timeout_s` is terminated and its code given as None."""

    def one(process: Command) -> tuple[int | None, str, str]:
        try:
            return finished(process, timeout_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            _, out, err = finished(process, 30)
            return None, out, err

    with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        return list(pool.map(one, processes))


def answers(listen: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=0.5):
            return True
    except OSError:
        return False


def write_config(path: Path, config: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(config))
    return str(path)


def database_text(db_url: str) -> str:
    """Every row of every table of the database, as text."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            return "\n".join(
                row
                for table in list(tables)
                for row in conn.execute(text(f'SELECT t::text FROM "{table}" t')).scalars()
            )
    finally:
        engine.dispose()


def http_text(instance: Instance) -> str:
    out = []
    for endpoint in ("/status", "/metrics", "/healthz"):
        with urllib.request.urlopen(f"http://{instance.listen}{endpoint}", timeout=5) as reply:
            out.append(reply.read().decode())
    return "\n".join(out)


def debug_instance(workdir: Path, config: dict[str, Any], log_format: str) -> Instance:
    instance = Instance(workdir, config)
    command = instance._command()
    instance._command = lambda: [*command, "--log-level", "DEBUG", "--log-format", log_format]
    return instance


# -- change 1: the login ------------------------------------------------------------------------


def test_check_config_logs_in_with_every_awkward_password_by_file_and_env(
    awkward_broker: ActiveMQ, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    cases = [
        (RUN_USER, RUN_PW),
        (ODD_USER, ODD_PW),
        (LONG_USER, LONG_PW),
        *((user, right) for user, right, _ in [*ESCAPE_TWINS, CR_TWIN]),
    ]
    running = []
    for n, (user, password) in enumerate(cases):
        # By file and by environment in turn; the server user's by both.
        for how in ("file", "env") if user == RUN_USER else (("file", "env")[n % 2],):
            keys: dict[str, Any] = {"user": user}
            env = {}
            if how == "file":
                keys["password_file"] = secret_file(tmp_path / f"pw-{n}", password)
            else:
                keys["password_env"] = f"RS_AWK_PW_{n}"
                env[f"RS_AWK_PW_{n}"] = password
            config = standalone_config(
                f"rs-chk{n}", tmp_path, awkward_broker, pg_url, queues, **keys
            )
            path = write_config(tmp_path / f"chk-{n}-{how}.toml", config)
            log = ("DEBUG", "json" if n % 2 else "text")
            running.append(((user, how), cli("check-config", "--config", path, env=env, log=log)))
    failures, found = [], []
    results = all_finished([process for _, process in running], timeout_s=90)
    for ((user, how), _), (code, out, err) in zip(running, results, strict=True):
        broker_line = next((line for line in out.splitlines() if line.startswith("broker:")), "")
        if code != 0 or not broker_line.startswith("broker: ok"):
            failures.append(f"{user!r} by {how}: exit {code}: {broker_line or out + err}")
        found += leaks(f"check-config {user!r} by {how}", out + err)
        assert "Traceback" not in err, err
    assert not failures, failures
    assert not found, found


def refusals_of(
    broker: ActiveMQ,
    pg_url: str,
    queues: list[str],
    tmp_path: Path,
    twins: list[tuple[str, str, str]],
) -> tuple[list[str], list[str]]:
    """check-config and run, side by side, for each (user, right, tried) with the tried password
    from the environment: what did not go as a refusal should, and any password seen."""
    running = []
    listens: list[str] = []
    for n, (user, _right, tried) in enumerate(twins):
        env = {f"RS_TWIN_PW_{n}": tried}
        config = standalone_config(
            f"rs-twin{n}",
            tmp_path,
            broker,
            pg_url,
            queues,
            user=user,
            password_env=f"RS_TWIN_PW_{n}",
        )
        path = write_config(tmp_path / f"twin-{n}.toml", config)
        log = ("DEBUG", "json" if n % 2 else "text")
        running.append(
            (user, "check-config", cli("check-config", "--config", path, env=env, log=log))
        )
        running.append((user, "run", cli("run", "--config", path, env=env, log=log)))
        listens += [config["http"]["listen"]] * 2
    problems, found = [], []
    # A refused run exits within seconds; one that logged in opens its HTTP port and runs on.
    for (_, command, process), listen in zip(running, listens, strict=True):
        wait_until(
            lambda p=process, at=listen, c=command: (
                p.poll() is not None or (c == "run" and answers(at))
            ),
            30,
            f"{command} to exit, or run to log in",
        )
    results = all_finished([process for _, _, process in running], timeout_s=0.5)
    for (user, command, _), (code, out, err) in zip(running, results, strict=True):
        if code is None:
            problems.append(f"{command} as {user}: logged in (it serves HTTP and runs on)")
            found += leaks(f"{command} as {user}", out + err)
            continue
        found += leaks(f"{command} as {user}", out + err)
        if "Traceback" in out + err:
            problems.append(f"{command} as {user}: a traceback: {err[-800:]}")
        tried = next(tried for name, _, tried in twins if name == user)
        if "\n" in tried or "\r" in tried:
            # A line break cannot be sent in a login: the config refuses it by its key.
            line = "broker.password_env: holds a line break"
            if code != (1 if command == "check-config" else 2) or line not in out + err:
                problems.append(
                    f"{command} as {user}: not refused by its key: {(out + err)[-800:]}"
                )
            continue
        if code != 1:
            problems.append(f"{command} as {user}: exit {code}, not 1: {(out + err)[-800:]}")
            continue
        if command == "check-config":
            broker_line = next(
                (line for line in out.splitlines() if line.startswith("broker:")), ""
            )
            if not broker_line.startswith("broker: failed: ") or "refused user" not in broker_line:
                problems.append(f"check-config as {user}: {broker_line!r}")
        else:
            last = err.strip().splitlines()[-1]
            expected = f"reporting-server: broker {broker.host} refused user {user!r}:"
            refused = [line for line in err.splitlines() if "refused user" in line]
            if not last.startswith(expected) or refused != [last]:
                problems.append(f"run as {user}: {refused or err[-800:]}")
    return problems, found


def test_passwords_equal_only_once_unescaped_are_refused_by_check_config_and_run(
    awkward_broker: ActiveMQ, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    problems, found = refusals_of(awkward_broker, pg_url, queues, tmp_path, ESCAPE_TWINS)
    assert not problems, problems
    assert not found, found


def test_a_carriage_return_is_not_taken_for_backslash_r(
    awkward_broker: ActiveMQ, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    problems, found = refusals_of(awkward_broker, pg_url, queues, tmp_path, [CR_TWIN])
    assert not found, found
    assert not problems, problems


def test_awkward_passwords_flow_exactly_once_and_no_spelling_leaks_anywhere(
    awkward_broker: ActiveMQ,
    postgres: Any,
    pg_url: str,
    queues: list[str],
    queue_prefix: str,
    tmp_path: Path,
    instances: list[Instance],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two instances side by side, each with its own queues and database: the odd user's password
    # from the environment with JSON lines, the server user's from a file with text lines.
    monkeypatch.setenv("RS_ODD_PW", ODD_PW)
    prefix_b = f"t{uuid.uuid4().hex[:10]}."
    queues_b = [f"{prefix_b}gvp.reporting.{kind}" for kind in KINDS]
    db_b = postgres.create_database(f"t_{uuid.uuid4().hex}")
    config_a = standalone_config(
        "rs-odd", tmp_path, awkward_broker, pg_url, queues, user=ODD_USER, password_env="RS_ODD_PW"
    )
    pw_file = secret_file(tmp_path / "run.pw", RUN_PW)
    config_b = standalone_config(
        "rs-run", tmp_path, awkward_broker, db_b, queues_b, user=RUN_USER, password_file=pw_file
    )
    a = debug_instance(tmp_path / "rs-odd", config_a, "json")
    b = debug_instance(tmp_path / "rs-run", config_b, "text")
    instances.extend([a, b])
    a.start()
    b.start()
    for server in (a, b):
        wait_until(lambda s=server: s.status()["broker"] == "connected", 30, f"{server.name} in")
    flows = [
        Flow(
            [awkward_broker.host],
            tmp_path / f"ledger-{n}",
            count=120,
            rate=0,
            queue_prefix=prefix,
            user=PRODUCER_USER,
            password=PRODUCER_PW,
        ).start()
        for n, prefix in enumerate((queue_prefix, prefix_b))
    ]
    ids_a, ids_b = (flow.join(60) for flow in flows)
    assert len(ids_a) == len(ids_b) == 120
    assert_exactly_once(pg_url, ids_a)
    assert_exactly_once(db_b, ids_b)

    found = []
    for server in (a, b):
        found += leaks(f"{server.name} http", http_text(server))
    for server in (a, b):
        server.stop()
        content = server.log_path.read_text()
        assert "DEBUG" in content and "CONNECT" in content, content[-2000:]
        assert "Traceback" not in content
        found += leaks(f"{server.name} log", content)
    found += leaks("database a", database_text(pg_url))
    found += leaks("database b", database_text(db_b))
    assert not found, found


def test_producer_client_and_produce_command_log_in_with_awkward_password_only(
    awkward_broker: ActiveMQ,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    # The producer may not create queues: a server user's subscription makes them first.
    from reporting.config import HostPort
    from reporting.harness.probes import StompSession

    where = HostPort.parse(awkward_broker.host)
    with StompSession(where.host, where.port, login=(RUN_USER, RUN_PW), timeout_s=10) as server:
        for n, kind in enumerate(KINDS):
            destination = f"/queue/{queue_prefix}gvp.reporting.{kind}"
            server.send_frame("SUBSCRIBE", {"destination": destination, "id": str(n)})
        server.send_frame("DISCONNECT", {"receipt": "bye"})
        assert server.read_frame()[0] in ("RECEIPT", "MESSAGE")

    # The right password, through the importable client ...
    ledger = tmp_path / "client-ledger"
    with ReportClient(
        [awkward_broker.host],
        user=PRODUCER_USER,
        password=PRODUCER_PW,
        ledger=ledger,
        queues=[f"{queue_prefix}gvp.reporting.{kind}" for kind in KINDS],
    ) as client:
        client.send("cdr", _cdr(), report_id=f"awk-{TAG}-1")
        client.flush()
    assert ledger.read_text().split() == [f"awk-{TAG}-1"]
    # ... not one that equals it only once unescaped.
    twin = PRODUCER_PW.replace("\\c", ":")
    refused = ReportClient(
        [awkward_broker.host],
        user=PRODUCER_USER,
        password=twin,
        reconnect_timeout_s=2,
        connect_timeout_s=2,
        queues=[f"{queue_prefix}gvp.reporting.{kind}" for kind in KINDS],
    )
    with pytest.raises(BrokerError):
        with refused:
            refused.send("cdr", _cdr(), report_id=f"awk-{TAG}-2")
    assert refused.stats.confirmed == 0

    # The produce command, by --password-env, at DEBUG.
    base = ["produce", "--broker", awkward_broker.host, "--user", PRODUCER_USER]
    base += ["--queue-prefix", queue_prefix, "--count", "8", "--reconnect-timeout", "3"]
    right = cli(
        *base,
        "--password-env",
        "RS_P",
        "--ledger",
        str(tmp_path / "p-ledger"),
        env={"RS_P": PRODUCER_PW},
    )
    wrong = cli(*base, "--password-env", "RS_P", env={"RS_P": twin})
    code, out, err = finished(right)
    assert code == 0, err
    assert len((tmp_path / "p-ledger").read_text().split()) == 8
    found = leaks("produce", out + err, [PRODUCER_PW, twin])
    code, out, err = finished(wrong)
    assert code == 1, err
    assert "Traceback" not in err
    found += leaks("produce refused", out + err, [PRODUCER_PW, twin])
    assert not found, found


def _cdr() -> dict[str, Any]:
    import random

    from reporting.samples import sample_report

    return sample_report("cdr", random.Random(1))


def test_password_with_blanks_around_it_is_refused_by_its_key(
    awkward_broker: ActiveMQ, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    # ActiveMQ trims every header value, and STOMP has no escape for a blank: such a password
    # would reach the broker as another one.
    config = standalone_config(
        "rs-pad", tmp_path, awkward_broker, pg_url, queues, user=PADDED_USER, password_env="RS_PAD"
    )
    path = write_config(tmp_path / "pad.toml", config)
    for command in ("check-config", "run"):
        code, out, err = finished(cli(command, "--config", path, env={"RS_PAD": PADDED_PW}))
        assert not leaks(command, out + err, [PADDED_PW])
        assert code == (1 if command == "check-config" else 2), (command, code, err[-800:])
        assert "broker.password_env: has blanks" in out + err, (out + err)[-800:]
        assert "Traceback" not in out + err


def test_password_longer_than_the_header_line_once_escaped_is_refused_without_showing_it(
    awkward_broker: ActiveMQ, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    # 5,400 characters as written, 10,400 once its backslashes are doubled: more than the 10,240
    # bytes of a header line ActiveMQ reads, which would read the rest as a frame of its own and
    # name it in an ERROR.
    tail = "".join(random.Random(TAG).choices(string.ascii_letters + string.digits, k=400))
    password = "\\" * 5000 + tail
    config = standalone_config(
        "rs-tail", tmp_path, awkward_broker, pg_url, queues, user="tail", password_env="RS_TAIL"
    )
    path = write_config(tmp_path / "tail.toml", config)
    for command in ("check-config", "run"):
        code, out, err = finished(cli(command, "--config", path, env={"RS_TAIL": password}))
        pieces = {tail[i : i + 12] for i in range(len(tail) - 12)}
        shown = [line[:160] for line in (out + err).splitlines() if any(p in line for p in pieces)]
        assert not shown, f"pieces of the password in the log: {shown[:3]}"
        assert code == (1 if command == "check-config" else 2), (command, code, err[-800:])
        assert "broker.password_env: is longer than" in out + err, (out + err)[-800:]


def test_a_long_password_of_colons_logs_in_as_written(
    awkward_broker: ActiveMQ, pg_url: str, queues: list[str], tmp_path: Path
) -> None:
    # Colons are not escaped in the login, so 5,400 of them still fit the header line.
    config = standalone_config(
        "rs-colons", tmp_path, awkward_broker, pg_url, queues, user=COLONS_USER, password_env="PW"
    )
    path = write_config(tmp_path / "colons.toml", config)
    code, out, err = finished(cli("check-config", "--config", path, env={"PW": COLONS_PW}))
    assert code == 0 and "broker: ok" in out, (out + err)[-800:]
    assert not leaks("check-config", out + err, [COLONS_PW])


# -- change 2: stop() cut off from ZooKeeper ----------------------------------------------------

SESSION_S = 2.0
# How soon a SIGTERM'd instance must be gone, cut off or not: "promptly, in a few seconds".
EXIT_S = 3.0


class RoleWatch:
    """Samples the instances' roles every 50 ms on a thread of its own. Each sample asks the
    instances in the order given: the one that may take over first, so that a hand-over between
    two questions is not taken for two actives."""

    def __init__(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.samples: list[dict[str, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="role-watch", daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append(roles(self.instances))
            self._done.wait(0.05)

    def __enter__(self) -> "RoleWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def double_actives(self) -> list[dict[str, str]]:
        return [s for s in self.samples if list(s.values()).count("active") > 1]


def sigterm(instance: Instance, *, within_s: float = EXIT_S) -> float:
    """SIGTERM the instance; the seconds it took to exit, asserted within `within_s` and with
    exit code 0 and no traceback in its log."""
    assert instance._popen is not None
    asked = time.monotonic()
    os.kill(instance.pid, signal.SIGTERM)
    try:
        wait_until(lambda: instance._popen.poll() is not None, 20, "the exit", every_s=0.02)
    finally:
        took = time.monotonic() - asked
    code = instance._popen.returncode
    content = instance.log_path.read_text(errors="replace")
    instance.stop()  # reaped and forgotten (already gone)
    for bad in ("Traceback", "Exception ignored", "Fatal Python error", "--- Logging error"):
        assert bad not in content, f"{bad} in {instance.name}'s log:\n{content[-3000:]}"
    assert code == 0, f"{instance.name} exited {code}:\n{content[-2000:]}"
    assert took <= within_s, f"{instance.name} took {took:.2f} s to exit after SIGTERM"
    print(f"\n{instance.name}: exited {took:.2f} s after SIGTERM")
    return took


def log_count(instance: Instance, needle: str) -> int:
    return instance.log_path.read_text(errors="replace").count(needle)


def wait_cut_off(instance: Instance, before: int, timeout_s: float = SESSION_S + 5) -> None:
    """Until the instance's ZooKeeper client has said it lost the connection once more."""
    wait_until(
        lambda: log_count(instance, "zookeeper connection suspended") > before,
        timeout_s,
        f"{instance.name} to see its zookeeper connection suspended",
    )


def role_of(instance: Instance) -> str:
    return roles([instance])[instance.name]


def through_proxies(
    builder: Callable[..., Pair], tcp_proxy: Callable[..., Any], zookeeper: Any, names: list[str]
) -> tuple[Pair, dict[str, Any]]:
    """A pair each of whose instances reaches ZooKeeper through a TcpProxy of its own."""
    proxies = {name: tcp_proxy("127.0.0.1", zookeeper.port) for name in names}
    pair = builder(**{name: {"ha": {"zookeeper": p.host}} for name, p in proxies.items()})
    return pair, proxies


def start_in_order(pair: Pair) -> tuple[Instance, Instance]:
    """The first instance started and active, then the second, standby."""
    first, second = pair
    first.start()
    wait_until(lambda: role_of(first) == "active", 30, f"{first.name} active")
    second.start()
    wait_until(lambda: role_of(second) == "standby", 30, f"{second.name} standby")
    wait_until(
        lambda: (second.try_status() or {}).get("holder") == first.config["name"],
        10,
        f"{second.name} to see {first.name} as the holder",
    )
    return first, second


def flowing(pair: Pair, tmp_path: Path, queue_prefix: str, active: Instance) -> Flow:
    flow = Flow(
        pair.producer_hosts, tmp_path / "ledger", count=900, rate=300, queue_prefix=queue_prefix
    ).start()
    wait_until(lambda: active.status()["stored"] > 50, 30, "reports flowing")
    return flow


@pytest.mark.parametrize("mode", ["shared", "segregated"])
def test_sigterm_of_an_active_cut_off_from_zookeeper_exits_promptly_and_the_peer_takes_over(
    mode: str,
    request: pytest.FixtureRequest,
    tcp_proxy: Callable[..., Any],
    zookeeper: Any,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    builder = request.getfixturevalue(f"{mode}_pair")
    names = ["rs-a", "rs-b"] if mode == "shared" else ["rs-p", "rs-b"]
    pair, proxies = through_proxies(builder, tcp_proxy, zookeeper, names)
    active, peer = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([peer, active]) as watch:
        before = log_count(active, "zookeeper connection suspended")
        proxies[names[0]].blackhole()
        wait_cut_off(active, before)
        sigterm(active)
        # The peer takes over once the session has expired (segregated: and the grace period).
        wait_until(lambda: role_of(peer) == "active", SESSION_S + 6, f"{peer.name} active")
    if mode == "shared":
        assert not watch.double_actives(), watch.double_actives()[:3]
    else:
        # Its broker holds what producers sent it since: the primary comes back for it.
        proxies[names[0]].heal()
        active.start()
        wait_until(lambda: (role_of(active), role_of(peer)) == ("active", "standby"), 60, "at rest")
    assert_exactly_once(pg_url, flow.join(60))


def test_sigterm_of_an_active_just_as_its_path_goes_dark_exits_within_seconds(
    shared_pair: Callable[..., Pair],
    tcp_proxy: Callable[..., Any],
    zookeeper: Any,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    # The ZooKeeper client still believes it is connected: stop() waits for the close, which
    # waits for an answer that cannot come, until kazoo gives the connection up.
    pair, proxies = through_proxies(shared_pair, tcp_proxy, zookeeper, ["rs-a", "rs-b"])
    active, peer = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([peer, active]) as watch:
        proxies["rs-a"].blackhole()
        sigterm(active, within_s=EXIT_S + SESSION_S)
        wait_until(lambda: role_of(peer) == "active", SESSION_S + 6, f"{peer.name} active")
    assert not watch.double_actives(), watch.double_actives()[:3]
    assert_exactly_once(pg_url, flow.join(60))


@pytest.mark.parametrize("mode", ["shared", "segregated"])
def test_sigterm_of_a_standby_cut_off_exits_promptly_and_the_active_carries_on(
    mode: str,
    request: pytest.FixtureRequest,
    tcp_proxy: Callable[..., Any],
    zookeeper: Any,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    builder = request.getfixturevalue(f"{mode}_pair")
    names = ["rs-a", "rs-b"] if mode == "shared" else ["rs-p", "rs-b"]
    pair, proxies = through_proxies(builder, tcp_proxy, zookeeper, names)
    active, standby = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([standby, active]) as watch:
        before = log_count(standby, "zookeeper connection")
        proxies["rs-b"].blackhole()
        wait_until(
            lambda: log_count(standby, "zookeeper connection") > before,
            SESSION_S + 5,
            "the standby to see its zookeeper connection suspended",
        )
        sigterm(standby)
        ids = flow.join(60)
    assert not watch.double_actives(), watch.double_actives()[:3]
    # The active never let go.
    assert all(sample[active.name] == "active" for sample in watch.samples), [
        s for s in watch.samples if s[active.name] != "active"
    ][:3]
    assert_exactly_once(pg_url, ids)


def test_sigterm_of_an_instance_that_never_reached_zookeeper_exits_promptly(
    shared_pair: Callable[..., Pair],
    tcp_proxy: Callable[..., Any],
    zookeeper: Any,
) -> None:
    # Dark from the start: the election never connected, its round thread waits for it.
    pair, proxies = through_proxies(shared_pair, tcp_proxy, zookeeper, ["rs-a", "rs-b"])
    proxies["rs-a"].blackhole()
    lonely = pair[0]
    lonely.start()
    assert role_of(lonely) == "standby"
    sigterm(lonely)


def test_sigterm_while_zookeeper_is_paused_exits_promptly_and_the_peer_takes_over_on_resume(
    shared_pair: Callable[..., Pair],
    zookeeper: Any,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    pair = shared_pair()
    active, peer = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([peer, active]) as watch:
        before = log_count(active, "zookeeper connection suspended")
        zookeeper.pause()
        try:
            wait_cut_off(active, before)
            sigterm(active)
            # Nobody can take over while ZooKeeper sleeps.
            assert role_of(peer) == "standby"
        finally:
            zookeeper.resume()
        wait_until(lambda: role_of(peer) == "active", SESSION_S + 10, f"{peer.name} active")
    assert not watch.double_actives(), watch.double_actives()[:3]
    assert_exactly_once(pg_url, flow.join(60))


def test_sigterm_right_after_zookeeper_is_paused_exits_within_seconds(
    shared_pair: Callable[..., Pair],
    zookeeper: Any,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    # Paused, not partitioned: the TCP connection stays up and the client still says connected.
    pair = shared_pair()
    active, peer = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([peer, active]) as watch:
        zookeeper.pause()
        try:
            sigterm(active, within_s=EXIT_S + SESSION_S)
        finally:
            zookeeper.resume()
        wait_until(lambda: role_of(peer) == "active", SESSION_S + 10, f"{peer.name} active")
    assert not watch.double_actives(), watch.double_actives()[:3]
    assert_exactly_once(pg_url, flow.join(60))


def test_sigterm_as_the_path_heals_exits_promptly_and_never_two_actives(
    shared_pair: Callable[..., Pair],
    tcp_proxy: Callable[..., Any],
    zookeeper: Any,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    pair, proxies = through_proxies(shared_pair, tcp_proxy, zookeeper, ["rs-a", "rs-b"])
    active, peer = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([peer, active]) as watch:
        before = log_count(active, "zookeeper connection suspended")
        proxies["rs-a"].blackhole()
        # Cut off, suspended, but its session not yet expired: healing now could save it.
        wait_cut_off(active, before)
        proxies["rs-a"].heal()
        sigterm(active)
        wait_until(lambda: role_of(peer) == "active", SESSION_S + 6, f"{peer.name} active")
    assert not watch.double_actives(), watch.double_actives()[:3]
    assert_exactly_once(pg_url, flow.join(60))


@pytest.mark.parametrize("mode", ["shared", "segregated"])
def test_sigterm_of_a_connected_active_still_hands_over_within_about_a_second(
    mode: str,
    request: pytest.FixtureRequest,
    pg_url: str,
    queue_prefix: str,
    tmp_path: Path,
) -> None:
    pair = request.getfixturevalue(f"{mode}_pair")()
    active, peer = start_in_order(pair)
    flow = flowing(pair, tmp_path, queue_prefix, active)
    with RoleWatch([peer, active]) as watch:
        asked = time.monotonic()
        os.kill(active.pid, signal.SIGTERM)
        wait_until(lambda: role_of(peer) == "active", 10, f"{peer.name} active", every_s=0.02)
        took = time.monotonic() - asked
        wait_until(lambda: active._popen.poll() is not None, EXIT_S, f"{active.name} gone")
    print(f"\n{mode}: {peer.name} active {took:.2f} s after SIGTERM of {active.name}")
    assert took <= 1.2, f"hand-over took {took:.2f} s"
    assert active._popen.returncode == 0
    if mode == "shared":
        assert not watch.double_actives(), watch.double_actives()[:3]
    else:
        active.start()
        wait_until(lambda: (role_of(active), role_of(peer)) == ("active", "standby"), 60, "at rest")
    assert_exactly_once(pg_url, flow.join(60))
