"""compose/: valid YAML, every referenced file exists, every server config passes validation."""

import re
from pathlib import Path

import pytest
import yaml

from reporting.config import load_config

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("*.yml"))


def test_there_is_a_compose_file_per_mode_and_per_scaled_out_system() -> None:
    assert {f.name for f in COMPOSE_FILES} == {
        "shared.yml",
        "segregated.yml",
        "ensemble.yml",
        "pg-standby.yml",
        "group.yml",
    }


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_references_only_existing_files(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    services = document["services"]
    assert services
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (path.parent / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in document.get("volumes", {}), f"{name}: undeclared volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name}: depends on unknown {dependency}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_servers_use_an_image_that_one_service_builds(path: Path) -> None:
    services = yaml.safe_load(path.read_text())["services"]
    built = {s["image"] for s in services.values() if "build" in s}
    servers = [s for s in services.values() if s.get("image") in built]
    expected = 3 if path.name == "group.yml" else 2
    assert len(servers) == expected, "a pair is two server instances, the group three"


@pytest.mark.parametrize("path", sorted((COMPOSE / "config").glob("*.toml")), ids=lambda p: p.name)
def test_server_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.ha.mode in ("shared", "segregated", "group")
    assert config.database.url.startswith("postgresql+psycopg://")


def test_every_config_is_mounted_by_a_compose_file() -> None:
    mounted = {
        (COMPOSE / volume.split(":")[0]).resolve()
        for path in COMPOSE_FILES
        for service in yaml.safe_load(path.read_text())["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith("./config/")
    }
    assert mounted == {p.resolve() for p in (COMPOSE / "config").glob("*.toml")}


def test_dockerfile_copies_what_the_dockerignore_lets_in() -> None:
    repo = COMPOSE.parent
    allowed = [
        line[1:].removesuffix("/**")
        for line in (COMPOSE / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    # Packages the image installs: both must pass the dockerignore filter.
    for needed in ("pyproject.toml", "reporting", "storage"):
        assert needed in allowed
        assert (repo / needed).exists()
    assert re.search(r"^FROM python:3\.11-slim$", (COMPOSE / "Dockerfile").read_text(), re.M)
