"""`reporting-server` sub-commands run as a child process, as an operator would run them."""

import subprocess
import sys


def run_command(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m reporting.cli ARGV`, its stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "reporting.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
