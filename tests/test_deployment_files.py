"""The deployment files a user runs: docker-compose.yml, the Dockerfile, Prometheus' config and
alert rules, Grafana's provisioning and dashboard.

Images cannot be pulled here, so the services are not started; `docker compose config` checks
the file when Docker's compose plugin is present, and these tests check what it would not: every
file the compose file mounts or builds from exists, every setting it passes is one feastflow
reads, and every metric an alert or a panel asks for is one the server or the monitor exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from feastflow.settings import PROJECT_ROOT
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DEPLOY = PROJECT_ROOT / "deploy"
METRIC = re.compile(r"\bfeastflow_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def exported_metrics() -> set[str]:
    """Families the server exports, and the monitor's gauges (pipelines/monitoring/report.py)."""
    names = {family.name for family in ServingMetrics().registry.collect()}
    report = (PROJECT_ROOT / "pipelines" / "monitoring" / "report.py").read_text()
    names |= {f"feastflow_monitor_{n}" for n in re.findall(r'gauge\("([a-z_]+)"', report)}
    return names


def unknown_metrics(expressions: list[str]) -> set[str]:
    known = exported_metrics()
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    return {name for name in used
            if name not in known and not any(name.removesuffix(s) in known for s in SUFFIXES)}


def test_compose_has_every_service_and_their_files_exist() -> None:
    services = compose()["services"]
    assert set(services) >= {"server", "stream", "redis", "postgres", "prometheus", "grafana"}
    assert services["server"]["command"][:1] == ["serve"] and "--workers" in services["server"]["command"]
    assert services["stream"]["command"][:1] == ["stream"]
    assert (PROJECT_ROOT / "Dockerfile").is_file()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), (name, source)
    # what the Dockerfile copies is in the checkout
    for line in (PROJECT_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (PROJECT_ROOT / source).exists(), line


def test_compose_passes_only_settings_feastflow_reads() -> None:
    environment = compose()["x-feastflow"]["environment"]
    fields = set(ServingSettings.model_fields)
    for name in environment:
        if name == "REDIS_URL":
            continue
        assert name.startswith("FEASTFLOW_"), name
        assert name.removeprefix("FEASTFLOW_").lower() in fields, name
    assert environment["FEASTFLOW_PROFILE"] == "production"


def test_alerts_and_dashboard_ask_only_for_exported_metrics() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounted = {v.split(":")[1] for v in compose()["services"]["prometheus"]["volumes"]
               if v.startswith("./")}
    assert set(prometheus["rule_files"]) <= mounted
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8 and all(rule["alert"] and rule["expr"] for rule in alerts)
    assert unknown_metrics([rule["expr"] for rule in alerts]) == set()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "feastflow.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    assert unknown_metrics(exprs) == set()
    # a misspelt name is caught
    assert unknown_metrics(["rate(feastflow_request_total[5m])"]) == {"feastflow_request_total"}


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    # Docker's own check, where the compose plugin is installed (not on this build machine).
    docker = shutil.which("docker")
    has_compose = docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True).returncode == 0
    if not has_compose:
        pytest.skip("Docker's compose plugin is not installed")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "FEASTFLOW_USER_HASH_SECRET": "x" * 32,
           "FEASTFLOW_API_KEY": "key", "HOME": str(tmp_path)}
    result = subprocess.run([str(docker), "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([str(docker), "compose", "-f", str(COMPOSE), "config", "--quiet"],
                             capture_output=True, text=True, env={**env, "FEASTFLOW_API_KEY": ""})
    assert missing.returncode != 0 and "API key" in missing.stderr
