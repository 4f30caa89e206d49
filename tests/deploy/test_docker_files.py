"""docker/compose.yaml checked against the Compose Specification's JSON schema (the copy that
check-jsonschema ships) after variable interpolation with .env.example, plus the properties we rely on;
`docker compose config` too where the compose plugin is installed. The Dockerfiles get a small structural
lint (no hadolint here): pinned bases, non-root USER, HEALTHCHECK, exec-form CMD, no ADD of URLs, COPY
sources that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILES = [REPO / "docker" / "Dockerfile.api", REPO / "docker" / "Dockerfile.worker"]
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` substitution."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if operator in (":-", "-"):
            return argument if (value is None or (operator == ":-" and value == "")) else value
        if operator in (":?", "?"):
            if value is None or (operator == ":?" and value == ""):
                raise KeyError(f"{name}: {argument}")
            return value
        return value or ""

    return VARIABLE.sub(substitute, node)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env_example())  # merge keys (<<) resolved by PyYAML


def test_compose_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    check_jsonschema = pytest.importorskip("check_jsonschema")
    schema_file = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose)
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    with pytest.raises(jsonschema.ValidationError):  # the schema really is checking
        jsonschema.validators.validator_for(schema)(schema).validate(broken)


def test_required_variables_are_required() -> None:
    env = env_example()
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def test_compose_services_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker-cpu", "worker-webhooks", "worker-gpu"}
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
        assert ":" in services[name]["image"] and not services[name]["image"].endswith(":latest")
    assert services["migrate"]["command"] == ["gkd", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-cpu", "worker-webhooks", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        environment = services[name]["environment"]
        assert environment["GKD_DATABASE_URL"].startswith("postgresql+psycopg://gkd:change-me@postgres:5432/")
        assert environment["GKD_BROKER_URL"] == "redis://redis:6379/0"
    assert services["api"]["environment"]["GKD_MIGRATE_ON_START"] == "false"
    assert services["worker-cpu"]["environment"]["GKD_WORKER_QUEUES"] == "cpu"
    assert services["worker-gpu"]["environment"]["GKD_WORKER_QUEUES"] == "gpu"
    assert services["worker-webhooks"]["environment"]["GKD_WORKER_QUEUES"] == "webhooks"
    device = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "cu1" in services["worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"]
    assert services["worker-cpu"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    # Named volumes only, each declared; the storage volume is shared by the API and the workers.
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert not source.startswith((".", "/")), f"bind mount {volume}"
            assert source in declared
    assert {"pgdata", "redisdata", "storage"} <= declared
    for name in ("api", "worker-cpu", "worker-webhooks", "worker-gpu", "migrate"):
        assert "storage:/var/lib/gkd" in services[name]["volumes"]


def test_docker_compose_config_when_the_plugin_is_installed(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    env = tmp_path / ".env"
    env.write_text((REPO / ".env.example").read_text())
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(env), "--profile", "gpu",
                             "config", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        joined.append(current)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    names = [name for name, _ in steps]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for n, a in steps if n == "ARG" and "=" in a}
    # Pinned base image: the FROM (or the ARG it names) has an explicit tag that is not `latest`.
    base = next(a for n, a in steps if n == "FROM").split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*", base) and not base.endswith(":latest"), base
    # torch comes from an index URL given as a build argument, pinned to the project's version.
    assert "TORCH_INDEX_URL" in args and "torch==2.13.0" in dockerfile.read_text()
    # Runs as a non-root user, set after the last RUN.
    users = [a for n, a in steps if n == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert max(i for i, n in enumerate(names) if n == "RUN") < max(i for i, n in enumerate(names) if n == "USER")
    assert names.count("HEALTHCHECK") == 1
    healthcheck = next(a for n, a in steps if n == "HEALTHCHECK")
    assert "--interval=" in healthcheck and "CMD" in healthcheck
    for name, argument in steps:
        if name == "ADD":
            assert not re.search(r"https?://", argument), "ADD of a URL"
        if name in ("CMD", "ENTRYPOINT"):
            assert isinstance(json.loads(argument), list), f"{name} must be the exec form"
        if name == "COPY":
            for source in argument.split()[:-1]:
                if not source.startswith("--"):
                    assert (REPO / source).exists(), f"COPY source {source} is missing"
    assert "apt-get update" not in dockerfile.read_text() or "rm -rf /var/lib/apt/lists/*" in dockerfile.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_locked_versions(dockerfile: Path) -> None:
    """Every package but torch (whose build, CPU or CUDA, the image picks) comes from the hashed service lock,
    and gkd itself is installed without re-resolving its dependencies."""
    text = dockerfile.read_text()
    assert "COPY requirements ./requirements" in text
    assert "requirements/lockfile.py drop torch < requirements/service.txt" in text
    assert re.search(r"pip install --require-hashes --no-deps -r \S+service-no-torch\.txt", text)
    assert "pip install --no-deps ." in text
    assert not re.search(r'pip install "?\.\[', text), "an unlocked install of the extras"
