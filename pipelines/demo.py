"""The flagship job end to end, each step timed: generate, ingest, features, apply, train,
evaluate, promote, materialize, serve, predict and stream events over HTTP; then a summary."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from feastflow.settings import Settings
from feastflow.spec import ModelSpec


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(settings: Settings, use_case: str, timeout_s: float = 90.0,
                   extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `feastflow serve` in a child process; yield its base URL once /healthz has a model."""
    port = free_port()
    env = {**os.environ, **settings.as_env(), **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port),
         "--use-case", use_case], env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).json().get("model_version"):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not load a model within {timeout_s:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def running_processor(settings: Settings, use_case: str) -> Iterator[None]:
    """`feastflow stream` in a child process (Redis profile); the embedded server has its own."""
    if settings.profile != "redis":
        yield
        return
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "--use-case", use_case],
                            env={**os.environ, **settings.as_env()}, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()  # SIGTERM: it logs and acknowledges what it read, then exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def demo_requests(raw: pd.DataFrame, at: pd.Timestamp, n_known: int = 3) -> list[dict[str, Any]]:
    """Requests for a few real (raw-id) users in their latest context, plus an unknown user."""
    latest = raw.sort_values("timestamp").groupby("user_id").tail(1)
    busiest = raw["user_id"].value_counts().index[:n_known]
    out = []
    for user in [*busiest, "someone-new"]:
        row = latest[latest["user_id"] == user]
        context = ({"location": "home", "battery": 80, "charging": False, "network": "wifi"}
                   if row.empty else {
                       "location": row["location"].iloc[0], "battery": int(row["battery"].iloc[0]),
                       "charging": bool(row["charging"].iloc[0]),
                       "network": row["network"].iloc[0]})
        out.append({"user_id": user, "timestamp": at.isoformat(),
                    "context": {**context, "secs_since_prev_unlock": 1800.0}, "k": 4})
    return out


def run_demo(settings: Settings, spec: ModelSpec, users: int, days: int, seed: int,
             console: Console) -> bool:
    """Run every step, print each with its duration, end with the summary; True if all passed."""
    from pipelines.feast_ops import apply_repo, materialize
    from pipelines.features import compute_feature_tables
    from pipelines.generate import generate_events
    from pipelines.ingest import ingest_frame
    from pipelines.training import evaluate_alias, train_use_case
    from registry import lifecycle

    durations: list[tuple[str, float, str]] = []

    def step(name: str, fn: Callable[[], Any], describe: Callable[[Any], str] = str) -> Any:
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - started
        note = describe(result)
        durations.append((name, elapsed, note))
        console.print(f"[green]done[/green] {name} in {elapsed:.1f} s: {note}")
        return result

    console.print(f"profile [bold]{settings.profile}[/bold], home {settings.home}")
    raw = step("generate", lambda: generate_events(users, days, seed),
               lambda r: f"{len(r):,} unlocks of {users} users over {days} days")
    report = step("ingest", lambda: ingest_frame(raw, settings.events_dir,
                                                 settings.user_hash_secret),
                  lambda r: f"{r.rows_written:,} written, {r.duplicates_skipped:,} already there, "
                            f"{r.rows_rejected} rejected")
    if report.errors:
        return False
    step("features", lambda: compute_feature_tables(spec, settings.events_dir,
                                                    settings.features_dir / spec.name),
         lambda r: f"{len(r)} tables, {sum(r.values()):,} rows")
    step("apply", lambda: apply_repo(settings), lambda _: "feature repo registered")
    trained = step("train", lambda: train_use_case(settings, spec, progress=console.print),
                   lambda r: f"v{r.version} registered as challenger, "
                             f"{r.n_train_events} events / {r.n_train_rows} rows")
    evaluation = step("evaluate", lambda: evaluate_alias(settings, spec, lifecycle.CHALLENGER,
                                                         progress=console.print),
                      lambda r: f"top1 {r['top1']:.3f}, top4 {r['top4']:.3f}")
    decision = step("promote", lambda: lifecycle.promote(spec.registered_model_name, spec.gate),
                    lambda d: "passed" if d.passed else "rejected: " + "; ".join(d.reasons))
    if lifecycle.alias_version(spec.registered_model_name, lifecycle.CHAMPION) is None:
        console.print("[red]no champion: the gate rejected the first model[/red]")
        return False
    step("materialize", lambda: materialize(settings),
         lambda w: f"{w[0]:%Y-%m-%d} .. {w[1]:%Y-%m-%d} into the {settings.profile} online store")
    at = pd.Timestamp(evaluation["holdout_end"]) + pd.Timedelta(hours=8, minutes=5)
    requests = demo_requests(raw, at)
    answers, latencies, freshness = step(
        "serve, predict, stream events", lambda: _serve_over_http(settings, spec.name, requests),
        lambda r: f"{len(r[0])} answers, p50 {statistics.median(r[1]):.1f} ms over HTTP; "
                  f"events fresh online in p50 {statistics.median(r[2]):.0f} ms")
    _summary(console, durations, evaluation, trained.version, decision.passed, answers,
             latencies, freshness)
    return True


def _serve_over_http(settings: Settings, use_case: str, requests: list[dict[str, Any]],
                     repeat: int = 100) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    api_key = settings.api_key or secrets.token_hex(16)  # POST /v1/events needs one
    with running_server(settings, use_case, extra_env={"FEASTFLOW_API_KEY": api_key}) as url, \
            running_processor(settings, use_case), httpx.Client(base_url=url, timeout=60) as client:
        answers = []
        for body in requests:
            response = client.post("/v1/predict", json=body)
            response.raise_for_status()
            answers.append({"request": body, "response": response.json()})
        latencies = []
        for i in range(repeat):  # client-side round trips, one connection
            started = time.perf_counter()
            client.post("/v1/predict", json=requests[i % len(requests)]).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        freshness = _stream_events(settings, client, api_key, requests[0])
    return answers, latencies, freshness


def _stream_events(settings: Settings, client: httpx.Client, api_key: str,
                   request: dict[str, Any], n: int = 10) -> list[float]:
    """POST unlock events for a user one at a time; ms until Feast's online read shows each."""
    from feastflow.privacy import hash_user_id
    from feastflow.store import open_store

    store = open_store(settings)
    user = hash_user_id(request["user_id"], settings.user_hash_secret)
    start = pd.Timestamp(request["timestamp"])
    freshness = []
    # the first event also starts the server's in-process processor (it reads the event log once)
    for i in range(n + 1):
        at = start + pd.Timedelta(seconds=i)
        event = {"event_id": f"demo-{start.value}-{i}", "user_id": request["user_id"],
                 "timestamp": at.isoformat(), "app": ("camera", "maps", "music")[i % 3],
                 "session_seconds": 20.0, "secs_since_prev_unlock": 60.0,
                 **{k: request["context"][k] for k in ("location", "battery", "charging",
                                                       "network")},
                 "os_version": "android-14"}
        sent = time.perf_counter()
        client.post("/v1/events", json={"events": [event]},
                    headers={"x-api-key": api_key}).raise_for_status()
        deadline = sent + 60
        while True:
            row = store.get_online_features(["user_last_app_fv:last_unlock_unix"],
                                            [{"user_id": user}]).to_dict()
            if row["last_unlock_unix"][0] == int(at.timestamp()):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"event {event['event_id']} never reached the online store")
            time.sleep(0.002)
        if i:
            freshness.append((time.perf_counter() - sent) * 1000)
    return freshness


def _summary(console: Console, durations: list[tuple[str, float, str]],
             evaluation: dict[str, Any], version: str, promoted: bool,
             answers: list[dict[str, Any]], latencies: list[float], freshness: list[float]
             ) -> None:
    from pipelines.cli import metrics_table

    console.rule("[bold]summary")
    steps = Table(title="steps")
    steps.add_column("step")
    steps.add_column("seconds", justify="right")
    steps.add_column("result")
    for name, seconds, note in durations:
        steps.add_row(name, f"{seconds:.1f}", note)
    steps.add_row("total", f"{sum(d[1] for d in durations):.1f}", "")
    console.print(steps)
    console.print(metrics_table(evaluation))
    console.print(f"model registry: next_app v{version} "
                  f"{'is champion (alias champion)' if promoted else 'stayed challenger'}")
    preds = Table(title="predictions answered by the running server")
    for column in ("user", "context", "top apps", "model", "server ms"):
        preds.add_column(column)
    for answer in answers:
        body, response = answer["request"], answer["response"]
        apps = ", ".join(a["app"] for a in response["apps"])
        note = f" ({response['fallback']})" if response["fallback"] else ""
        ctx = body["context"]
        preds.add_row(body["user_id"], f"{body['timestamp'][11:16]} {ctx['location']} "
                      f"{ctx['network']} {ctx['battery']}%", apps + note,
                      f"v{response['model_version']}", f"{response['latency_ms']:.1f}")
    console.print(preds)
    console.print(f"/v1/predict round trip over HTTP: p50 {statistics.median(latencies):.1f} ms, "
                  f"p95 {sorted(latencies)[int(len(latencies) * 0.95) - 1]:.1f} ms "
                  f"({len(latencies)} requests)")
    console.print(f"POST /v1/events -> user_last_app_fv in the online store: p50 "
                  f"{statistics.median(freshness):.0f} ms, max {max(freshness):.0f} ms "
                  f"({len(freshness)} events, one at a time)")
