"""The container files cannot be built here (no Docker daemon); check what can be checked: every path they copy
exists in the build context and passes .dockerignore, compose points at them, only nginx takes a host port, both
images run the server as a non-root user with a readiness health check and a Hugging Face cache volume, and the
CPU image installs no triton. (nginx with docker/nginx/proxy.conf itself runs for real in test_replicas.py.)"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections import Counter
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


def mounts(service: dict) -> dict[str, str]:
    """A service's volumes as {target: source}; a source may hold ${VAR:-default}."""
    return dict(reversed(re.match(r"(.+?):(/[^:]*)(?::ro|:rw)?$", v).groups()) for v in service["volumes"])


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
    assert "/ready" in healthcheck  # healthy = ready; compose starts nginx once the replicas are
    (entrypoint,) = [args for kind, args in steps if kind == "ENTRYPOINT"]
    assert "serve" in entrypoint


def test_compose_builds_from_the_repository_with_models_and_cache_volumes():
    services = compose()["services"]
    built = {name: service for name, service in services.items() if "build" in service}
    assert set(built) == {"spikegpt", "spikegpt-cuda"}
    for service in built.values():
        build = service["build"]
        assert (DOCKER / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
        volumes = mounts(service)
        assert "/models" in volumes and volumes["/cache"] in compose()["volumes"]  # a named volume for the HF cache


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_hugging_face_cache_is_a_volume(name):
    steps = instructions(DOCKER / name)
    env = " ".join(args for kind, args in steps if kind == "ENV")
    (home,) = re.findall(r"HF_HOME=(\S+)", env)
    (volumes,) = [args for kind, args in steps if kind == "VOLUME"]
    assert any(home.startswith(v.strip('"')) for v in re.findall(r'"[^"]+"', volumes)), (home, volumes)


def test_no_two_services_bind_one_host_port():
    ports = Counter(p.rsplit(":", 1)[0] for s in compose()["services"].values() for p in s.get("ports", []))
    assert ports and max(ports.values()) == 1, ports
    assert "ports" not in compose()["services"]["spikegpt"]  # the replicas are reached through nginx


def test_nginx_fronts_the_replicas_with_the_shipped_proxy_settings():
    nginx = compose()["services"]["nginx"]
    files = {target: DOCKER / source for target, source in mounts(nginx).items()}
    assert all(source.is_file() for source in files.values())
    site = files["/etc/nginx/conf.d/default.conf"].read_text()
    assert f"include {next(t for t, s in files.items() if s.name == 'proxy.conf')};" in site
    assert re.search(r"server spikegpt:8000 resolve max_fails=\d+ fail_timeout=\d+s;", site)
    assert "non_idempotent" in (DOCKER / "nginx" / "proxy.conf").read_text()


def test_the_dockerignore_keeps_what_the_images_copy_and_nothing_else():
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    kept = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for name in DOCKERFILES:
        for kind, args in instructions(DOCKER / name):
            if kind in ("COPY", "ADD"):
                *sources, _ = [word for word in shlex.split(args) if not word.startswith("--")]
                assert all(source.rstrip("/") in kept for source in sources), (name, sources)
    assert not kept & {".venv", ".git", "runs", "tests"}


def test_the_cpu_image_installs_no_triton():
    spec = importlib.util.spec_from_file_location("cpu_requirements", DOCKER / "cpu_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wanted = module.requirements(REPO / "pyproject.toml")
    names = {re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() for r in wanted}
    assert "triton" not in names and "torch" not in names
    assert {"transformers", "fastapi", "uvicorn"} <= names
    steps = [args for kind, args in instructions(DOCKER / "Dockerfile") if kind == "RUN"]
    assert any("cpu_requirements.py" in step and "pip install -r" in step for step in steps)
    assert any("pip install --no-deps ." in step for step in steps)  # the package, without its triton requirement
    assert not any(re.search(r"pip install (\S+ )*\"?\.\[", step) for step in steps)
