"""The SQLite file holds call records: its owner alone may read it, whatever the umask."""

import os
import stat
from pathlib import Path

from storage.database import Sink


def test_sqlite_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "reporting.db"
    old = os.umask(0o022)
    try:
        sink = Sink(f"sqlite:///{path}", cluster="rs", journal="rs")
        try:
            sink.upgrade()
            sink.claim_epoch(1)
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if name.exists():
                    assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
            assert path.exists()
        finally:
            sink.close()
    finally:
        os.umask(old)
