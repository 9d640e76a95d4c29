"""The instance configuration: one TOML file, read once into a frozen, typed Config.

Every key has a default except where a mode needs it; an unknown key, a wrong type or a bad value
raises ConfigError naming the key, which the CLI prints as one line (exit code 2).
Secrets (broker, database and ZooKeeper passwords) come from the environment or a file named in the
config, never from logs: they print as `***`.
"""

import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reporting.errors import ConfigError
from reporting.ha.group import queue_key
from reporting.logs import remember_secret
from reporting.wire.login import login_refusal
from storage.errors import DatabaseUnavailable
from storage.journal.record import FRAME_SIZE, HEADER_SIZE
from storage.reports import DEFAULT_QUEUES, KINDS, kind_of

MODES = ("standalone", "shared", "segregated", "group")
ROLES = ("primary", "backup")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# A queue name becomes a journal folder and a ZooKeeper node: ActiveMQ's plain name characters
# only, dot-separated parts, so neither '/' nor '..' nor a wildcard ('*', '>') gets through.
_QUEUE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
QUEUE_MAX_CHARS = 200

# The JSON around a body in a journal record: id and queue (at most 200 characters each, up to
# 4 bytes a character), the reason of a rejection (it may quote the destination), the time, keys.
RECORD_ENVELOPE_BYTES = 2048


def record_bytes(max_body_bytes: int) -> int:
    """The most one journal record takes for a body of max_body_bytes, with its frame.

    A rejected body is kept as base64 (4 bytes for every 3), the largest of the encodings."""
    return FRAME_SIZE + RECORD_ENVELOPE_BYTES + 4 * -(-max_body_bytes // 3)


def redact_url(url: str) -> str:
    """The URL with its password, and every query parameter libpq keeps secret, shown as ***."""
    from storage.database.engine import redacted

    return redacted(url)


@dataclass(frozen=True, slots=True)
class HostPort:
    """A network address as the config gives it (`host:port`, `[v6]:port`), parsed once."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "HostPort":
        """Raises ValueError unless `text` is host:port with a port in 1..65535."""
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Secret(str):
    """A string that never shows itself in repr or str formatting of a config."""

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True)
class HAConfig:
    mode: str = "standalone"
    role: str = "primary"
    zookeeper: str = "127.0.0.1:2181"
    cluster: str = "/gvp/reporting/pair1"
    session_timeout_s: float = 2.0
    # Segregated backup: how long the primary's node must be gone before the backup activates.
    grace_s: float = 0.5
    # HTTP addresses of the other instance(s), for `reporting-server status`.
    peers: tuple[HostPort, ...] = ()
    # ZooKeeper digest credentials; with them every node the pair creates is theirs alone.
    user: str | None = None
    password: Secret | None = field(default=None, repr=False)

    @property
    def auth(self) -> tuple[str, str] | None:
        """(user, password) for ZooKeeper, or None when the pair does not authenticate."""
        if self.user is None or self.password is None:
            return None
        return self.user, str(self.password)


@dataclass(frozen=True)
class BrokerConfig:
    hosts: tuple[HostPort, ...] = (HostPort("127.0.0.1", 61613),)
    queues: tuple[str, ...] = DEFAULT_QUEUES
    user: str | None = None
    password: Secret | None = field(default=None, repr=False)
    prefetch: int = 1000
    batch_records: int = 500
    batch_wait_s: float = 0.05
    heartbeat_ms: int = 1000
    max_body_bytes: int = 1 << 20
    # STOMP over TLS to every host, the broker's certificate verified against ca_file (PEM).
    tls: bool = False
    ca_file: Path | None = None


@dataclass(frozen=True)
class DatabaseConfig:
    # With a password, the URL holds the one read at start-up.
    url: str = "sqlite:///reporting.db"
    batch_records: int = 1000
    # The file the password was read from; the server reads it again for each new connection.
    password_file: Path | None = None

    def __repr__(self) -> str:
        return (
            f"DatabaseConfig(url={redact_url(self.url)!r}, batch_records={self.batch_records},"
            f" password_file={self.password_file!r})"
        )


@dataclass(frozen=True)
class JournalConfig:
    dir: Path = Path("journal")
    max_bytes: int = 1 << 30
    segment_bytes: int = 64 << 20
    # Drained segments are kept this long, so that what a database lost after committing it
    # (an asynchronously replicated standby promoted) can be replayed.
    retain_s: float = 0.0


@dataclass(frozen=True)
class HttpConfig:
    listen: HostPort = HostPort("127.0.0.1", 8080)

    @property
    def host(self) -> str:
        return self.listen.host

    @property
    def port(self) -> int:
        return self.listen.port


@dataclass(frozen=True)
class LaneSpec:
    """One journal and what it is drained under: consumed from `queues` into `dir`, fenced in
    the domain `fence`, its drained positions stored under `key`."""

    id: str
    dir: Path
    fence: str
    key: str
    queues: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    name: str = "rs"
    ha: HAConfig = HAConfig()
    broker: BrokerConfig = BrokerConfig()
    database: DatabaseConfig = DatabaseConfig()
    journal: JournalConfig = JournalConfig()
    http: HttpConfig = HttpConfig()
    path: Path | None = None

    @property
    def lanes(self) -> tuple["LaneSpec", ...]:
        """The instance's lanes: one over all queues, or one per queue in group mode."""
        if self.ha.mode == "group":
            return tuple(
                LaneSpec(queue, self.journal.dir / queue, key, key, (queue,))
                for queue in self.broker.queues
                for key in [queue_key(self.ha.cluster, queue)]
            )
        return (
            LaneSpec(
                self.name,
                self.journal.dir,
                self.fence_cluster,
                self.journal_key,
                self.broker.queues,
            ),
        )

    @property
    def fence_cluster(self) -> str:
        """The fencing domain: the pair's lock in shared mode, else this instance alone."""
        if self.ha.mode == "shared":
            return self.ha.cluster
        if self.ha.mode == "segregated":
            return f"{self.ha.cluster}/{self.name}"
        return self.name

    @property
    def journal_key(self) -> str:
        """The key of this instance's drained positions: one journal per store."""
        return f"{self.ha.cluster}/shared" if self.ha.mode == "shared" else self.name


def _host_port(key: str, value: str) -> HostPort:
    try:
        return HostPort.parse(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _check_type(key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    # bool is an int in Python; a flag is never a number in this file.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(key, f"expected {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(key, f"expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", bool: "a bool"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class _Section:
    """Reads one table of the file, remembering which keys were used to flag the rest."""

    def __init__(self, data: dict[str, Any], prefix: str) -> None:
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        return _check_type(self.key(name), self.data[name], kind)

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False) -> Any:
        value = self.get(name, int if integer else (int, float), default)
        if value < minimum:
            raise ConfigError(self.key(name), f"must be >= {minimum}, got {value}")
        return value if integer else float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list, list(default))
        if not value:
            raise ConfigError(self.key(name), "must not be empty")
        for item in value:
            _check_type(self.key(name), item, str)
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _secret(
    sec: _Section, name: str, env: dict[str, str], base: Path | None = None, *, read: bool = True
) -> Secret | None:
    """A secret given as `<name>_env` (a variable's name) or `<name>_file` (a path, relative to
    the config file's folder); a file others may read or write is refused. With `read` false the
    keys are checked but the secret is not looked up (None)."""
    env_name = sec.get(f"{name}_env", str, None)
    sec.get(f"{name}_file", str, None)
    path = _secret_file(sec, name, base)
    if name in sec.data:
        raise ConfigError(
            sec.key(name), f"secrets are not written in the file; use {name}_env or {name}_file"
        )
    if not read:
        return None
    secret = _read_secret(sec, name, env_name, None if path is None else str(path), env)
    if secret is not None:
        remember_secret(secret)
    return secret


def _secret_file(sec: _Section, name: str, base: Path | None) -> Path | None:
    """The file a secret is read from: `<name>_file` where no `<name>_env` is given."""
    if f"{name}_env" in sec.data or f"{name}_file" not in sec.data:
        return None
    path = Path(sec.data[f"{name}_file"])
    return path if base is None else base / path


def _secret_given(sec: _Section, name: str) -> bool:
    return f"{name}_env" in sec.data or f"{name}_file" in sec.data


def _read_secret(
    sec: _Section, name: str, env_name: str | None, file_name: str | None, env: dict[str, str]
) -> Secret | None:
    if env_name is not None:
        if env_name not in env:
            raise ConfigError(sec.key(f"{name}_env"), f"environment variable {env_name} is not set")
        value = env[env_name]
        try:
            # os.environ hands over bytes that are not UTF-8 as lone surrogates, which no hop,
            # nor the log filter, can encode.
            value.encode()
        except UnicodeEncodeError:
            raise ConfigError(sec.key(f"{name}_env"), f"{env_name} is not UTF-8") from None
        return Secret(value)
    if file_name is not None:
        return read_secret_file(sec.key(f"{name}_file"), file_name)
    return None


MAX_SECRET_BYTES = 65536


def read_secret_file(key: str, path: str) -> Secret:
    """The secret in the file `path`, given by `key`: refused unless only its owner may read it
    and it is UTF-8 text. Blanks and line breaks at either end are not part of it."""
    try:
        # Not blocking on a pipe with no writer (run reads the database's file for each new
        # connection, on the drainer's thread); only a regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            # Checked on the opened file, so the mode seen is that of the bytes read.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(key, f"{path} is not a regular file")
            if st.st_mode & 0o077:
                mode = st.st_mode & 0o777
                reason = f"is open to group or others (mode {mode:03o}); chmod 600 it"
                raise ConfigError(key, f"{path} {reason}")
            if st.st_size > MAX_SECRET_BYTES:
                raise ConfigError(key, f"{path} is over {MAX_SECRET_BYTES} bytes: not a password")
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    try:
        return Secret(data.decode().strip())
    except UnicodeDecodeError:
        # Its text would show the bytes around the first undecodable one: the secret's.
        raise ConfigError(key, f"{path} is not UTF-8") from None


def _ca_file(sec: _Section, base: Path | None, tls: bool) -> Path | None:
    """A PEM file of CA certificates (relative to the config file's folder), checked readable;
    required with TLS, meaningless without."""
    name = sec.get("ca_file", str, None)
    if name is None:
        if tls:
            raise ConfigError(sec.key("ca_file"), f"required with {sec.key('tls')} = true")
        return None
    if not tls:
        raise ConfigError(sec.key("ca_file"), f"only used with {sec.key('tls')} = true")
    path = Path(name)
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ConfigError(sec.key("ca_file"), f"{path} not found") from None
    except ssl.SSLError:
        raise ConfigError(sec.key("ca_file"), f"{path} holds no PEM CA certificate") from None
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or exc}"
        raise ConfigError(sec.key("ca_file"), reason) from None
    return path


def _section(top: _Section, name: str) -> _Section:
    data = top.get(name, dict, {})
    return _Section(data, name)


def parse_config(
    data: dict[str, Any],
    *,
    path: Path | None = None,
    env: dict[str, str] | None = None,
    secrets: bool = True,
) -> Config:
    """Validates the parsed TOML document; relative paths are taken from the file's folder.
    With `secrets` false no password is looked up (they are None): for commands that use no hop
    needing one."""
    base = path.resolve().parent if path is not None else None
    env = dict(os.environ) if env is None else env
    top = _Section(data, "")
    name = top.get("name", str, Config.name)
    if not _NAME.match(name):
        raise ConfigError("name", f"letters, digits, '.', '_' or '-' only; got {name!r}")

    sec = _section(top, "ha")
    mode = sec.choice("mode", HAConfig.mode, MODES)
    ha = HAConfig(
        mode=mode,
        role=sec.choice("role", HAConfig.role, ROLES),
        zookeeper=sec.get("zookeeper", str, HAConfig.zookeeper),
        cluster=sec.get("cluster", str, HAConfig.cluster),
        session_timeout_s=sec.number("session_timeout", HAConfig.session_timeout_s, minimum=0.5),
        grace_s=sec.number("grace", HAConfig.grace_s, minimum=0.0),
        peers=tuple(_host_port("ha.peers", p) for p in sec.get("peers", list, [])),
        user=sec.get("user", str, None),
        password=_secret(sec, "password", env, base, read=secrets),
    )
    if ha.user is not None and (":" in ha.user or not ha.user.strip()):
        raise ConfigError("ha.user", "a ZooKeeper digest user: non-empty, without ':'")
    if (ha.user is None) == _secret_given(sec, "password"):
        key = "ha.user" if ha.user is None else "ha.password_env"
        raise ConfigError(key, "ha.user and ha.password_env/password_file go together")
    for hp in ha.zookeeper.split(","):
        _host_port("ha.zookeeper", hp.strip())
    if not ha.cluster.startswith("/") or ha.cluster.endswith("/") or "//" in ha.cluster:
        raise ConfigError("ha.cluster", f"must be an absolute ZooKeeper path; got {ha.cluster!r}")
    sec.finish()

    sec = _section(top, "broker")
    tls = sec.get("tls", bool, BrokerConfig.tls)
    broker = BrokerConfig(
        hosts=tuple(
            _host_port("broker.hosts", h)
            for h in sec.strings("hosts", tuple(map(str, BrokerConfig.hosts)))
        ),
        queues=sec.strings("queues", BrokerConfig.queues),
        user=sec.get("user", str, None),
        password=_secret(sec, "password", env, base, read=secrets),
        prefetch=sec.number("prefetch", BrokerConfig.prefetch, minimum=1, integer=True),
        batch_records=sec.number(
            "batch_records", BrokerConfig.batch_records, minimum=1, integer=True
        ),
        batch_wait_s=sec.number("batch_wait", BrokerConfig.batch_wait_s, minimum=0.0),
        heartbeat_ms=sec.number("heartbeat_ms", BrokerConfig.heartbeat_ms, minimum=0, integer=True),
        max_body_bytes=sec.number(
            "max_body_bytes", BrokerConfig.max_body_bytes, minimum=64, integer=True
        ),
        tls=tls,
        ca_file=_ca_file(sec, base, tls),
    )
    refusal = login_refusal(broker.user, None if broker.password is None else str(broker.password))
    if refusal is not None:
        what, reason = refusal
        key = sec.key("user") if what == "user" else _password_key(sec)
        raise ConfigError(key or sec.key("password_env"), reason)
    if broker.heartbeat_ms == 0 and mode != "standalone":
        # Without heart-beats the broker never drops a paused or cut-off instance's connection,
        # and the unacked messages it holds wait for it instead of going to the new active.
        raise ConfigError(
            "broker.heartbeat_ms", f"must be above 0 in {mode} mode (a few hundred to 2000)"
        )
    for queue in broker.queues:
        if not _QUEUE.match(queue) or len(queue) > QUEUE_MAX_CHARS:
            raise ConfigError(
                "broker.queues",
                f"bad queue name {queue!r}: letters, digits, '_' and '-' in parts joined by '.'"
                f" (at most {QUEUE_MAX_CHARS} characters)",
            )
        if kind_of(queue) not in KINDS:
            raise ConfigError(
                "broker.queues",
                f"unknown queue {queue!r}; expected a name ending in .<{'|'.join(KINDS)}>",
            )
    sec.finish()

    sec = _section(top, "database")
    url = sec.get("url", str, DatabaseConfig.url)
    password = _secret(sec, "password", env, base, read=secrets)
    _check_database_url(url, password_key=_password_key(sec))
    if password is not None:
        _check_database_password(_password_key(sec), password)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and base is not None:
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            url = "sqlite:///" + str((base / path).resolve())
    if password is not None:
        url = _with_password(url, password)
    database = DatabaseConfig(
        url=url,
        batch_records=sec.number(
            "batch_records", DatabaseConfig.batch_records, minimum=1, integer=True
        ),
        password_file=None if password is None else _secret_file(sec, "password", base),
    )
    sec.finish()

    sec = _section(top, "journal")
    jdir = Path(sec.get("dir", str, str(JournalConfig.dir)))
    if base is not None and not jdir.is_absolute():
        jdir = base / jdir
    journal = JournalConfig(
        dir=jdir,
        max_bytes=sec.number("max_bytes", JournalConfig.max_bytes, minimum=4096, integer=True),
        segment_bytes=sec.number(
            "segment_bytes", JournalConfig.segment_bytes, minimum=4096, integer=True
        ),
        retain_s=sec.number("retain", JournalConfig.retain_s, minimum=0.0),
    )
    sec.finish()
    _check_sizes(broker, journal)

    sec = _section(top, "http")
    http = HttpConfig(
        listen=_host_port("http.listen", sec.get("listen", str, str(HttpConfig.listen)))
    )
    sec.finish()
    top.finish()
    return Config(
        name=name, ha=ha, broker=broker, database=database, journal=journal, http=http, path=path
    )


def _check_sizes(broker: BrokerConfig, journal: JournalConfig) -> None:
    """Refuse sizes a batch of largest bodies cannot fit: the journal would pause for good."""
    record = record_bytes(broker.max_body_bytes)
    batch = broker.batch_records * record
    if journal.max_bytes < batch:
        raise ConfigError(
            "journal.max_bytes",
            f"{journal.max_bytes} cannot hold one batch at broker.max_body_bytes: "
            f"broker.batch_records ({broker.batch_records}) records of up to {record} bytes "
            f"need {batch}; raise it or lower broker.batch_records or broker.max_body_bytes",
        )
    if journal.segment_bytes < HEADER_SIZE + record:
        raise ConfigError(
            "journal.segment_bytes",
            f"{journal.segment_bytes} cannot hold one record at broker.max_body_bytes "
            f"({broker.max_body_bytes}): need {HEADER_SIZE + record}; raise it or lower "
            "broker.max_body_bytes",
        )


def _password_key(sec: _Section) -> str | None:
    """The key a password is given by, if any."""
    for key in ("password_env", "password_file"):
        if key in sec.data:
            return sec.key(key)
    return None


def _check_database_url(url: str, *, password_key: str | None) -> None:
    """A URL SQLAlchemy can parse, without a password anywhere in it, and with a user to go
    with a password given by `password_key`."""
    from sqlalchemy.engine import make_url

    from storage.database.engine import SECRET_PARAMETERS, connection_problem

    if "://" not in url:
        raise ConfigError(
            "database.url",
            "expected an SQLAlchemy URL such as postgresql+psycopg://user@host:5432/db",
        )
    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError; its text would repeat the URL, password and all
        raise ConfigError("database.url", "not a valid SQLAlchemy URL") from None
    values = [value for values in parsed.query.values() for value in _strings(values)]
    for part in (url, parsed.username, parsed.host, parsed.database, *parsed.query, *values):
        problem = connection_problem(part or "")
        if problem is not None:
            # Percent-encoded (%00) too: it is the decoded part the driver gets.
            raise ConfigError("database.url", problem)
    hidden = ", ".join(key for key in parsed.query if key.lower() in SECRET_PARAMETERS)
    if parsed.password is not None or hidden:
        where = f" (query parameter {hidden})" if hidden else ""
        raise ConfigError(
            "database.url",
            f"holds a password{where}; give it as database.password_env or database.password_file",
        )
    if password_key is not None and not parsed.username:
        # Without a user in the URL SQLAlchemy drops the password without a word.
        raise ConfigError(
            password_key, "a password needs a user in database.url (scheme://USER@host/db)"
        )


def database_password(database: DatabaseConfig) -> Callable[[], str] | None:
    """What a new database connection logs in with: `database.password_file` read again then,
    with the checks of start-up, so that a rotated password is taken without a restart. None
    where the URL's password is all there is (from `password_env`, which cannot change while the
    server runs, or none). The reader raises DatabaseUnavailable, saying why in one line naming
    the key, when the file can no longer be read or its password is refused: the connection
    fails, the journal keeps buffering, and the next one reads it again."""
    path = database.password_file
    if path is None:
        return None
    key = "database.password_file"

    def read() -> str:
        try:
            password = read_secret_file(key, str(path))
            remember_secret(password)
            _check_database_password(key, password)
        except ConfigError as error:
            raise DatabaseUnavailable(str(error)) from None
        return str(password)

    return read


def _strings(value: str | tuple[str, ...]) -> tuple[str, ...]:
    # A query parameter given more than once has a tuple of values.
    return value if isinstance(value, tuple) else (value,)


def _check_database_password(key: str | None, password: str) -> None:
    """Refuses, by its key, a database password the driver would not pass on as it is."""
    from storage.database.engine import connection_problem

    problem = connection_problem(password)
    if problem is not None:
        raise ConfigError(key or "database.password_env", problem)


def _with_password(url: str, password: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(password=password).render_as_string(hide_password=False)
    except Exception as exc:  # sqlalchemy raises ArgumentError for a malformed URL
        raise ConfigError("database.url", f"not a valid URL: {exc}") from None


def load_config(path: str | Path, *, secrets: bool = True) -> Config:
    """Reads and validates one instance's TOML file; paths in it are relative to the file.
    With `secrets` false passwords are not looked up (see parse_config)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path=path, secrets=secrets)
