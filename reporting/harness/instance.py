"""A Reporting Server instance as a local process: `reporting-server run --config FILE`.

The demo and the tests run the server as operators do, in a process of its own, so that kill -9,
SIGSTOP and SIGTERM hit the real thing. The config file is written from a dict shaped like the
TOML file (CONTRACT.md).
"""

import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reporting.errors import HarnessError
from reporting.harness.ports import free_port
from reporting.harness.service import Service


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def to_toml(config: dict[str, Any]) -> str:
    """The TOML text of a config dict: top-level scalars first, then one table per section."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for section, values in config.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# What tests and chaos runs set beyond the product's defaults: a heartbeat every second, so that a
# dead broker connection is noticed within seconds, and smaller database batches.
TEST_SETTINGS: dict[str, dict[str, Any]] = {
    "broker": {"heartbeat_ms": 1000},
    "database": {"batch_records": 500},
}


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, section by section (a section's keys are merged)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


def instance_config(
    name: str,
    *,
    ha: Mapping[str, Any],
    hosts: Sequence[str],
    queues: Sequence[str],
    db_url: str,
    journal_dir: Path,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config of one instance as a dict shaped like its TOML file, `settings` laid over it."""
    config = {
        "name": name,
        "ha": dict(ha),
        "broker": {"hosts": list(hosts), "queues": list(queues)},
        "database": {"url": db_url},
        "journal": {"dir": str(journal_dir)},
    }
    return merge(config, settings or {})


class Instance(Service):
    """One server instance; `config` is the TOML document as a dict (http.listen is filled in)."""

    def __init__(self, workdir: Path | str, config: dict[str, Any]) -> None:
        self.name = f"reporting-{config.get('name', 'rs')}"
        super().__init__(workdir)
        config = {key: dict(v) if isinstance(v, dict) else v for key, v in config.items()}
        http = config.setdefault("http", {})
        if "listen" not in http:
            http["listen"] = f"127.0.0.1:{free_port()}"
        self.config = config
        self.listen: str = http["listen"]
        self.config_path = self.workdir / "config.toml"
        # Another checkout's code to run instead of this one's (the bench compares versions).
        self.code: Path | None = None

    def start(self, timeout_s: float = 90) -> None:
        """Starts the instance; a port taken since it was picked is replaced by another."""
        for _ in range(3):
            try:
                super().start(timeout_s)
                return
            except HarnessError:
                # This start's lines, not only the last few: an older checkout's server
                # (`code`, for the bench) ends a failed bind with a long traceback.
                this_start = self.log_tail(80).rsplit("--- harness: starting", 1)[-1]
                if "Address already in use" not in this_start:
                    raise
            self.listen = f"127.0.0.1:{free_port()}"
            self.config["http"]["listen"] = self.listen
        super().start(timeout_s)

    @property
    def server_pid(self) -> int | None:
        """The pid the server knows itself by (what its messages name), while it runs."""
        return self.pid

    def ports(self) -> dict[str, int]:
        return {"http": int(self.listen.rsplit(":", 1)[1])}

    def _prepare(self) -> None:
        self.config_path.write_text(to_toml(self.config))

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "reporting.cli", "run", "--config", str(self.config_path)]

    def _spawn_options(self) -> dict[str, Any]:
        if self.code is None:
            return {}
        return {"env": os.environ | {"PYTHONPATH": str(self.code)}}

    def _probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.listen}/healthz", timeout=1) as reply:
                if reply.status != 200:
                    return False
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return False
        return self._answers_as_itself()

    def _answers_as_itself(self) -> bool:
        """Whether what answers on `listen` is this instance: its name and journal directory.

        The port was free when it was picked, not when the process binds it a moment (or, the
        second of a pair, seconds) later; another process of the session (another xdist
        worker's instance) may have taken it meanwhile. Its /healthz would then pass for this
        instance's while this one exits with "Address already in use", and every later /status
        would be the other's role."""
        status = self.try_status(timeout_s=1.0)
        if status is None:
            return False
        # Either absent only from another checkout's server (`code`) of a version without it.
        name = status.get("name")
        if name is not None and "name" in self.config and name != self.config["name"]:
            return False
        theirs = (status.get("journal") or {}).get("dir")
        return theirs is None or os.path.realpath(theirs) == os.path.realpath(self.journal_dir)

    @property
    def journal_dir(self) -> Path:
        """The instance's journal directory: a relative one is the config file's folder's (the
        product's rule)."""
        return self.config_path.parent / str(self.config.get("journal", {}).get("dir", "journal"))

    def status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The instance's /status; raises OSError when it does not answer."""
        with urllib.request.urlopen(f"http://{self.listen}/status", timeout=timeout_s) as reply:
            return json.load(reply)

    def try_status(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        try:
            return self.status(timeout_s)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
            # HTTPException: the process went away in the middle of its answer (a stop or a kill).
            return None
