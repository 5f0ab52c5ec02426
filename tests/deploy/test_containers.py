"""The container files: the compose file against the Compose specification's JSON schema, the
Dockerfiles' key points (hadolint is not available here), and the files they point at."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_offload.config import load_settings
from ml_offload.metrics import Metrics, RuntimeGauges
from tests.deploy.conftest import DEPLOY, REPO

COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
COMPOSE_ENV = {"MLO_ADMIN_KEY": "k", "POSTGRES_PASSWORD": "p", "GRAFANA_ADMIN_PASSWORD": "g"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose specification's schema, as check-jsonschema vendors it (with its license)."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev extra) ships the schema")
    vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def validate(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_follows_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    assert validate(compose, compose_schema) == []


def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["healthcheck"]["retry"] = 5  # misspelt `retries`
    broken["services"]["postgres"]["ports"] = "5432"  # a list, not a string
    errors = validate(broken, compose_schema)
    assert any(e.startswith("['services', 'redis']") for e in errors), errors
    assert any("'5432' is not of type 'array'" in e for e in errors), errors


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"gateway", "postgres", "redis", "prometheus", "grafana", "mlflow"}
    assert expected <= set(services)
    gateway = services["gateway"]
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gateway["security_opt"]
    env = gateway["environment"]
    assert "@postgres:5432/mlo" in env["MLO_STORAGE__DATABASE_URL"]
    assert env["MLO_SECURITY__LIMITS__STORAGE_URL"].startswith("redis://redis:")
    for name, service in services.items():
        assert all(p.startswith("127.0.0.1:") for p in service.get("ports", [])), name
        image = service["image"]
        assert re.search(r":v?\d+\.\d+[\w.-]*$", image), f"{name}: image {image} is not pinned"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source


def test_prometheus_scrapes_the_gateway_port() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    port = load_settings(DEPLOY / "container.toml").server.port
    assert job["static_configs"][0]["targets"] == [f"gateway:{port}"]


def _exported_names() -> set[str]:
    """The metric names (with their suffixes) and label names a gateway exports."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
    }
    names = set()
    metrics = Metrics()
    metrics.watch(lambda: RuntimeGauges(0, (), ()))  # the runtime gauges' families
    for family in metrics.registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    call = metrics.genai.call("chat", "llama.cpp", "m", "m")  # a sample shows the labels
    call.usage({"prompt_tokens": 1, "completion_tokens": 1})
    call.finish()
    for family in metrics.registry.collect():
        names |= {label for sample in family.samples for label in sample.labels}
    return names


def test_dashboard_queries_metrics_the_gateway_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ml-offload.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    # every metric name and every GenAI label (gen_ai_request_model...) the queries name
    used = {name for expr in exprs for name in re.findall(r"\b(?:mlo|gen_ai)_\w+", expr)}
    assert used and used <= _exported_names(), used - _exported_names()
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "ml-offload.yaml").read_text()
    )
    grafana_mounts = compose_mounts("grafana")
    assert grafana_mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def compose_mounts(service: str) -> dict[str, str]:
    data = yaml.safe_load(COMPOSE.read_text())
    pairs = (v.split(":")[:2] for v in data["services"][service]["volumes"])
    return {src: dst for src, dst in pairs}


def test_container_config_is_valid_and_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLO_ADMIN_KEY", "k")
    settings = load_settings(DEPLOY / "container.toml")
    assert settings.server.host == "0.0.0.0" and settings.security.auth == "required"
    assert "/metrics" in settings.security.public_paths


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config(tmp_path: Path) -> None:
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**COMPOSE_ENV, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert done.returncode == 0, done.stderr


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """(instruction, arguments) per stage, continuation lines joined, ARG defaults applied."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Z]+)\s+(.*)$", line)
        if not m:
            continue
        op, rest = m.groups()
        if op == "ARG" and not stages and "=" in rest:
            key, value = rest.split("=", 1)
            args[key.strip()] = value.strip()
        rest = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), v.group(0)), rest)
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, rest))
    return stages


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_key_points(name: str) -> None:
    stages = dockerfile_stages(REPO / name)
    assert len(stages) == 2, "a build stage and a slim runtime stage"
    for stage in stages:
        base = stage[0][1].split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base), f"unpinned base {base}"
    final = dict(stages[-1])
    assert "USER" in final and final["USER"].split(":")[0] not in ("root", "0")
    assert final["HEALTHCHECK"].startswith("--interval=") and "/health" in final["HEALTHCHECK"]
    assert final["EXPOSE"] == "9000"
    assert json.loads(final["ENTRYPOINT"]) == ["mlo"]
    users = [i for i, (op, _) in enumerate(stages[-1]) if op == "USER"]
    runs = [i for i, (op, _) in enumerate(stages[-1]) if op == "RUN"]
    assert max(runs) < min(users), "nothing runs as root after USER"
    for op, rest in (step for stage in stages for step in stage):
        if op == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"
