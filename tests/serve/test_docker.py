"""The container files cannot be built here; check what can be checked: every path they copy exists in the build
context, compose points at them, and both images run the server as a non-root user with a health check."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_in_the_build_context(name):
    copies = [args for kind, args in instructions(DOCKER / name) if kind in ("COPY", "ADD")]
    assert copies
    for args in copies:
        *sources, _destination = [word for word in shlex.split(args) if not word.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{name} copies {source}, which is not in the repository"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_serves_as_a_non_root_user_with_a_health_check(name):
    steps = instructions(DOCKER / name)
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    (healthcheck,) = [args for kind, args in steps if kind == "HEALTHCHECK"]
    assert "/health" in healthcheck
    (entrypoint,) = [args for kind, args in steps if kind == "ENTRYPOINT"]
    assert "serve" in entrypoint


def test_compose_builds_from_the_repository_with_a_models_volume():
    services = compose()["services"]
    assert services
    for service in services.values():
        build = service["build"]
        assert (DOCKER / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
        assert any(volume.split(":")[-2] == "/models" for volume in service["volumes"])
