"""Feast's own CLI on feastflow's state: `feast` and feastflow see one registry, `feast ui` runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import copy_feature_repo

from feastflow.settings import Settings
from feastflow.store import apply_repo, open_store
from pipelines.demo import free_port

FEAST = Path(sys.executable).parent / "feast"


@dataclass(frozen=True)
class Applied:
    """next_app applied by feastflow in a home that is not the `var/` beside the repo."""

    folder: Path  # the use case's folder, where Feast's CLI runs
    env: dict[str, str]  # the environment of Feast's CLI: FEASTFLOW_HOME only
    views: list[str]


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    root = tmp_path_factory.mktemp("feast_cli")
    settings = Settings(home=root / "custom_home", feature_repo=copy_feature_repo(root))
    apply_repo(settings, "next_app")
    views = sorted(v.name for v in open_store(settings, "next_app").list_feature_views())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEASTFLOW_")}
    env["FEASTFLOW_HOME"] = str(settings.home)
    return Applied(settings.feature_repo / "next_app", env, views)



def test_feast_cli_with_feastflow_home_sees_the_registry_feastflow_wrote(applied: Applied) -> None:
    assert applied.views
    done = subprocess.run([str(FEAST), "feature-views", "list"], cwd=applied.folder, env=applied.env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in applied.views), done.stdout


def test_feast_ui_starts_and_answers_over_http(applied: Applied) -> None:
    port = free_port()
    proc = subprocess.Popen([str(FEAST), "ui", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=applied.folder, env=applied.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # Feast's imports are slow on a loaded machine
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        if health is None:
            proc.kill()
            pytest.fail(f"feast ui never answered (exit {proc.poll()}): {proc.communicate()[1][-3000:]}")
        assert health.status_code == 200
        page = httpx.get(f"{base}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        views = httpx.get(f"{base}/api/v1/feature_views", params={"project": "next_app"}, timeout=60)
        assert views.status_code == 200, views.text
        assert all(name in views.text for name in applied.views)
    finally:
        proc.kill()
        proc.wait(timeout=30)
