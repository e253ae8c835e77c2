"""The `feastflow` command itself: --version, timestamped logs, no library deprecation noise."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import SADeprecationWarning

from pipelines.cli import _is_quiet_deprecation, _show_warning
from registry.lifecycle import Registry

BIN = Path(sys.executable).parent
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (ERROR|WARNING) ")


def _env(home: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("FEASTFLOW_", "MLFLOW_", "PYTHONWARNINGS")) and k != "REDIS_URL"}
    return {**keep, "FEASTFLOW_HOME": str(home), **extra}


def _closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([str(BIN / "feastflow"), "--version"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == f"feastflow {version('feastflow')}"


def test_a_short_command_prints_no_deprecation_warning(tmp_path: Path) -> None:
    # `evaluate` on a home with an empty registry opens MLflow's SQLite store (SQLAlchemy's
    # `noload` notice) after Feast's import (whose simplefilter("once", DeprecationWarning)
    # overrides earlier filters).
    home = tmp_path / "home"
    home.mkdir()
    Registry(f"sqlite:///{home / 'mlflow.db'}", create=True).experiment_id("next_app")  # exists
    done = subprocess.run([str(BIN / "feastflow"), "evaluate", "-u", "next_app"],
                          env=_env(home), capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "next_app@champion does not exist" in out, out
    assert "DeprecationWarning" not in out and "FutureWarning" not in out, out
    assert "Creating initial MLflow database tables" not in out, out  # MLflow's INFO lines


def test_a_stream_error_line_carries_a_timestamp(tmp_path: Path) -> None:
    env = _env(tmp_path / "home", FEASTFLOW_PROFILE="redis",
               REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0")
    proc = subprocess.Popen([str(BIN / "feastflow"), "stream", "-u", "next_app"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "feastflow.processor" in line:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    error = [line for line in lines if "feastflow.processor" in line]
    assert error, "".join(lines)
    assert TIMESTAMPED.match(error[0]), error[0]


@pytest.mark.parametrize(("category", "filename", "quiet"), [
    (SADeprecationWarning, "/venv/lib/python3.11/site-packages/mlflow/store/db.py", True),
    (DeprecationWarning, "/venv/lib/python3.11/site-packages/mlflow/models/model.py", True),
    (FutureWarning, "/venv/lib/python3.11/site-packages/sqlalchemy/orm/query.py", True),
    (DeprecationWarning, "/work/feastflow/pipelines/training.py", False),  # ours: shown
    (DeprecationWarning, "/venv/lib/python3.11/site-packages/lightgbm/basic.py", False),
    (UserWarning, "/venv/lib/python3.11/site-packages/mlflow/models/model.py", False),
])
def test_only_the_named_libraries_deprecations_are_quiet(category: type[Warning], filename: str,
                                                         quiet: bool) -> None:
    assert _is_quiet_deprecation(category, filename) is quiet


def test_shown_warnings_are_logged_except_the_quiet_ones(caplog: pytest.LogCaptureFixture) -> None:
    feast = "/venv/lib/python3.11/site-packages/feast/feature_store.py"
    _show_warning(RuntimeWarning("On demand feature view is an experimental feature."),
                  RuntimeWarning, feast, 1)
    _show_warning(SADeprecationWarning("noload"), SADeprecationWarning, feast, 2)
    assert not caplog.records
    _show_warning(DeprecationWarning("ours"), DeprecationWarning, "/work/pipelines/x.py", 3)
    assert [(r.name, r.levelname) for r in caplog.records] == [("py.warnings", "WARNING")]
    assert "DeprecationWarning: ours" in caplog.records[0].getMessage()
