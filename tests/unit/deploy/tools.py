"""The operators' own checkers, run on the deploy files where they are installed."""

import shutil
import subprocess
from pathlib import Path

import pytest


def run_tool(
    name: str, *args: str, package: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`name ARGS` in `cwd`, its output captured as text; the test is skipped, naming the Debian
    package, where the tool is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package})")
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
