"""Every system file and binary the harness and the tests use belongs to a Debian package that
scripts/setup installs (the list in scripts/packages), so a fresh machine has it after setup.

A machine that had a package from earlier passes the tests whether or not setup names it; this
test fails there too, since it asks dpkg which package owns each file.
"""

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reporting.harness import activemq, mariadb, postgres, zookeeper

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ROOT / "scripts" / "packages"

# What the harness runs or loads from the system. Built from the modules' own constants where
# they have them, so a renamed jar or a moved binary directory shows here.
REFERENCED = [
    activemq.ACTIVEMQ_HOME / "bin" / "activemq.jar",
    *(activemq._SYSTEM_JARS / jar for jar in activemq._STATISTICS_JARS),
    *(zookeeper._JARS / jar for jar in zookeeper._CLASS_PATH),
    *(postgres.PG_BIN / binary for binary in ("postgres", "initdb", "pg_ctl", "pg_basebackup")),
    mariadb.MARIADBD,
    mariadb.INSTALL_DB,
    "java",  # activemq.py, zookeeper.py, ensemble.py
    "keytool",  # tls.py, tests/unit/harness/test_tls.py
]

# Where the harness and the tests may name a system file.
SOURCES = [ROOT / "reporting" / "harness", ROOT / "tests"]


def setup_packages() -> dict[str, str]:
    """scripts/packages as file -> package."""
    out = {}
    for line in PACKAGES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, file = line.split()
            out[file] = package
    return out


def owners(name: str) -> set[str]:
    """The Debian packages that own a file, or a binary found on PATH (through its links)."""
    if "/" in name:
        path = name
    else:
        found = shutil.which(name)
        assert found, f"{name} is not on PATH; run scripts/setup"
        # /usr/bin/java is an alternatives link that no package owns; its target is owned.
        path = os.path.realpath(found)
    done = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    assert done.returncode == 0, f"{path}: no package owns it ({done.stderr.strip()})"
    # "pkg1:amd64, pkg2: /path" per line; diversions ("diversion by ...") are not owners.
    packages = set()
    for line in done.stdout.splitlines():
        if line.startswith("diversion"):
            continue
        for package in line.split(": ", 1)[0].split(", "):
            packages.add(package.split(":")[0])
    return packages


@pytest.fixture(autouse=True)
def _dpkg() -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine: no dpkg-query")


def test_setup_reads_the_package_list() -> None:
    assert "scripts/packages" in (ROOT / "scripts" / "setup").read_text()


@pytest.mark.parametrize("name", [str(name) for name in REFERENCED])
def test_each_referenced_file_is_of_a_package_setup_installs(name: str) -> None:
    installed = set(setup_packages().values())
    found = owners(name)
    assert found & installed, f"{name} is in {sorted(found)}; add it to scripts/packages"


@pytest.mark.parametrize("name, package", sorted(setup_packages().items()))
def test_each_listed_file_is_of_its_package(name: str, package: str) -> None:
    # setup decides whether a package is missing by its file: a wrong pairing reinstalls for
    # ever or never.
    assert package in owners(name)


def _literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) is str]


def test_every_system_path_in_the_sources_is_referenced() -> None:
    # A new system file in the harness or a test must join REFERENCED (and so scripts/packages).
    referenced = [str(name) for name in REFERENCED]
    unknown = []
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            for text in _literals(path):
                for system in re.findall(r"/usr/[\w./+-]+", text):
                    # A directory is covered when a referenced file lies in it.
                    if not any(ref == system or ref.startswith(system + "/") for ref in referenced):
                        unknown.append(f"{path.relative_to(ROOT)}: {system}")
                if re.fullmatch(r"\w[\w.-]*\.jar", text):
                    if not any(ref.endswith("/" + text) for ref in referenced):
                        unknown.append(f"{path.relative_to(ROOT)}: {text}")
    assert not unknown, "system files not in REFERENCED:\n" + "\n".join(unknown)
