"""Logging for every command: one handler on the root logger, with a filter that keeps secrets
and report bodies out of every line, whichever library wrote it and at whatever level.

Redaction is done here rather than at each call site because the lines that leak are written by
libraries: stomp.py logs the CONNECT frame (its own mask wants a space after `passcode:`) and
every frame's body at DEBUG; kazoo logs its `Auth(... auth='user:password')` request.
"""

import json
import logging
import re
import threading
from collections.abc import Callable, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a line is about, given by an `About` logger or as `extra=`; kept in a JSON line.
FIELDS = ("queue", "epoch", "segment")
MASK = "***"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# Whatever the configured secrets are: a STOMP passcode header, a libpq keyword, a URL's password.
_PATTERNS = (
    (re.compile(r"(passcode:)[ \t]*[^\s'\",\\]+"), r"\1" + MASK),
    (re.compile(r"\b((?:ssl)?password\s*=\s*)[^\s&'\",\\]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"(://[^:/@\s]+:)[^@/\s]*@"), r"\1" + MASK + "@"),
    # A ZooKeeper digest ACL id carries the base64 SHA-1 of user:password, open to guessing.
    (re.compile(r"((?:digest:|id=')[^:\s'\",]+:)[A-Za-z0-9+/]{27}="), r"\1" + MASK),
)

# Library lines that dump a message body (a report, or a CONNECT frame): what stays of them.
_STOMP_RECEIVED = "received frame: %r, headers=%r, body=%r"
_STOMP_SENDING = "sending frame: %s"
_SQLALCHEMY_ROW = "Row %r"


def remember_secret(value: str) -> None:
    """From now on `value` (and its URL-encoded forms) prints as *** in every log line."""
    if not value:
        return
    with _secrets_lock:
        _secrets.update({value, quote(value, safe=""), quote_plus(value), *_escaped(value)})


def _escaped(value: str) -> set[str]:
    # Libraries log a secret inside the repr of a request (kazoo's Auth packet): quotes and
    # backslashes then come escaped, in whichever way repr or JSON chose for the whole string.
    slashed = value.replace("\\", "\\\\")
    return {
        slashed,
        slashed.replace("'", "\\'"),
        slashed.replace('"', '\\"'),
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
        # As a STOMP header value.
        slashed.replace("\n", "\\n").replace("\r", "\\r").replace(":", "\\c"),
    }


def redact(text: str) -> str:
    """`text` with every remembered secret, passcode and password value replaced by ***."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # the longest first: one may hold another
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter: rewrites each record's message (and traceback) redacted, and cuts the
    bodies out of the libraries' frame and row dumps."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        self._formatter = formatter or logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _cut_body(record):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            # Rendered here so that the handler's formatter uses this text, not its own.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _cut_body(record: logging.LogRecord) -> bool:
    """False to drop the record; a frame dump keeps its command and headers, not its body."""
    if record.name.startswith("stomp") and isinstance(record.args, tuple):
        if record.msg == _STOMP_RECEIVED and len(record.args) == 3:
            cmd, headers, body = record.args
            record.args = (cmd, headers, f"<{len(body or b'')} bytes>")
        elif record.msg == _STOMP_SENDING and len(record.args) == 1:
            # The frame as a list of lines; only its command is kept.
            command = re.match(r"\[?b?['\"]?([A-Z]*)", str(record.args[0]))
            record.msg, record.args = (
                "sending frame: %s (headers and body not logged)",
                ((command.group(1) if command else "") or "-",),
            )
    elif record.name.startswith("sqlalchemy") and record.msg == _SQLALCHEMY_ROW:
        return False  # result rows may be reports
    return True


class About(logging.LoggerAdapter):
    """A logger for the lines of one lane, drainer, consumer or election slot: each line carries
    the FIELDS given here, besides its own `extra=`. A callable is read at every line (the epoch a
    drainer writes under changes with its role); None leaves the field out; a lane's queues are
    one comma-joined field. Only the JSON format shows them: the text lines stay as they were."""

    def __init__(self, logger: logging.Logger, **fields: object) -> None:
        unknown = set(fields) - set(FIELDS)
        assert not unknown, f"not a log field: {sorted(unknown)}"
        for field, value in fields.items():
            if isinstance(value, Sequence) and not isinstance(value, str):
                fields[field] = ",".join(value) or None
        super().__init__(logger, fields)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        fields = {name: value() if callable(value) else value for name, value in self.extra.items()}
        kwargs["extra"] = {**fields, **kwargs.get("extra", {})}
        return msg, kwargs


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for a log shipper: time (UTC, ISO 8601), level, logger, the
    instance's name and role (see `describe_instance`), message, the FIELDS a line carries, and
    the traceback, if any. The record reaches it already redacted by the handler's filter."""

    def __init__(self) -> None:
        super().__init__()
        self.instance: Callable[[], dict[str, str | None]] = dict

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            **self.instance(),
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str)


def describe_instance(name: str, role: Callable[[], str | None]) -> None:
    """From now on a JSON line names the instance and its role at the time of the line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.instance = lambda: {"instance": name, "role": role()}


def setup(level: str, fmt: str = "text") -> None:
    """The root handler for a command, at `level` (one of LEVELS), in `fmt` (one of FORMATS),
    every line redacted. Where the root logger has handlers already (a test calling the CLI
    in-process) they are kept as they are, and only get the filter."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=getattr(logging, level), format=FORMAT)
        if fmt == "json":
            for handler in root.handlers:
                handler.setFormatter(JsonFormatter())
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(handler.formatter))
