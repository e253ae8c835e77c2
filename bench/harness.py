"""What the benchmarks share: progress lines, free ports, child processes, a private Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress, to stderr, with the seconds since start."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes --------------------------------------------------------------------------------


class Process:
    """A child in its own session (Ctrl-C reaches us, not it), its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name, self.cmd, self.log_path, self.env, self.cwd = name, cmd, log_path, env, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.cwd, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the child's process group (gunicorn forks workers), SIGKILL if it lingers."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=timeout_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a killed master
            os.killpg(proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class RedisServer:
    """A private redis-server whose data survives `shutdown save` and a restart."""

    def __init__(self, port: int, data_dir: Path, log_path: Path) -> None:
        self.port, self.data_dir = port, data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = Process("redis", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--dbfilename", "dump.rdb", "--appendonly", "no", "--daemonize", "no"], log_path)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str, timeout_s: float = 60.0) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                             timeout=timeout_s)
        return out.stdout.strip()

    def start(self, timeout_s: float = 60.0) -> None:
        """Start it and wait until it answers PING (it loads dump.rdb first)."""
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while self.cli("ping", timeout_s=5) != "PONG":
            if not self.process.running():
                raise RuntimeError(f"redis-server exited:\n{self.process.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            time.sleep(0.05)

    def stop(self) -> None:
        """SHUTDOWN SAVE (writes dump.rdb), then wait for the process; kill it if that fails."""
        proc = self.process.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.cli("shutdown", "save")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        self.process.stop()

    def dbsize(self) -> int:
        return int(self.cli("dbsize") or 0)


def feastflow_cmd() -> list[str]:
    exe = VENV_BIN / "feastflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pipelines.cli"]


def home_env(home: Path, redis_url: str) -> dict[str, str]:
    """The environment of every feastflow process of the run."""
    return {**os.environ, "FEASTFLOW_HOME": str(home), "FEASTFLOW_PROFILE": "redis", "REDIS_URL": redis_url}


def feast_yaml(home: Path, redis_url: str, folder: Path, use_case: str) -> Path:
    """What feastflow.store.repo_config does for the redis profile, as a file with absolute paths
    (the use case is its Feast project)."""
    import yaml

    from feastflow.settings import FEATURE_REPO
    from feastflow.store import PROFILE_YAML, redis_connection_string

    raw = yaml.safe_load(os.path.expandvars((FEATURE_REPO / PROFILE_YAML["redis"]).read_text()))
    raw["project"] = use_case
    raw["registry"]["path"] = f"sqlite:///{home / 'feast' / 'registry.db'}"  # the home's own registry
    raw["online_store"]["connection_string"] = redis_connection_string(redis_url)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "feature_store.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def start_feast_serve(home: Path, redis_url: str, work: Path, use_case: str,
                      max_requests: int = 0) -> tuple[Process, str]:
    """`feast serve` (one worker, no access log) over the home's registry; ready when /health is 200.

    max_requests 0: no worker recycling (Feast's default, 1000, restarts the worker every ~1,000
    requests, dropping connections).
    """
    import httpx

    from feastflow.settings import FEATURE_REPO

    port = free_port()
    yaml_path = feast_yaml(home, redis_url, work / "feast_repo", use_case)
    cmd = [str(VENV_BIN / "feast"), "-c", str(FEATURE_REPO / use_case), "-f", str(yaml_path), "serve",
           "--host",
           "127.0.0.1", "--port", str(port), "--no-access-log", "--workers", "1",
           "--max-requests", str(max_requests)]
    env = home_env(home, redis_url)
    env.pop("FEATURE_STORE_YAML_BASE64", None)  # it would win over -f
    process = Process("feast serve", cmd, work / "feast_serve.log", env=env,
                      cwd=FEATURE_REPO / use_case).start()
    base = f"http://127.0.0.1:{port}"
    log(f"feast serve on {base}: {' '.join(cmd[1:])}")
    deadline = time.monotonic() + 120
    while True:
        if not process.running():
            raise RuntimeError(f"feast serve exited:\n{process.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return process, base
        if time.monotonic() > deadline:
            process.stop()
            raise TimeoutError(f"feast serve was not ready within 120 s:\n{process.tail()}")
        time.sleep(0.25)
