"""The flagship job end to end, each step timed: generate (with drift), ingest, features, apply,
train, evaluate, promote, materialize, serve and predict over HTTP, the live days (the last
replayed through the server and the stream), monitor, retrain; then a summary."""

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
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from feastflow.settings import Settings
from feastflow.spec import ModelSpec

if TYPE_CHECKING:
    from pipelines.monitor import MonitorResult
    from pipelines.replay import ReplayStats
    from pipelines.training import RetrainResult


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


# The server of the demo's last steps: every prediction logged (monitoring reads them); no
# prediction or feature cache (a replay compresses a day into a minute: a 5-minute cache would
# answer hours of replayed time from one request); a latency budget a replay on a busy laptop
# never exceeds (the 50 ms default turned 45 % of the answers into fallbacks, measuring
# the machine instead of the model).
REPLAY_SERVER_ENV = {"FEASTFLOW_REQUEST_LOG_SAMPLE": "1", "FEASTFLOW_REQUEST_LOG_FLUSH_SECONDS": "1",
                     "FEASTFLOW_PREDICTION_CACHE_TTL_SECONDS": "0",
                     "FEASTFLOW_FEATURE_CACHE_TTL_SECONDS": "0",
                     "FEASTFLOW_LATENCY_BUDGET_MS": "5000"}


def run_demo(settings: Settings, spec: ModelSpec, users: int, days: int, seed: int,
             console: Console, live_days: int = 7, replay_days: int = 1) -> bool:
    """Run every step, print each with its duration, end with the summary; True if all passed.

    The world has `days` days of history and `live_days` more in which it drifts. The model is
    trained on the history; the live days arrive, the last `replay_days` of them through the
    running server (a prediction at each sampled unlock, then the unlock as an event); then
    `monitor` reads what was served and `retrain` decides whether a new model takes over.
    """
    from pipelines.feast_ops import apply_repo, materialize
    from pipelines.features import compute_feature_tables
    from pipelines.generate import Drift, generate_events
    from pipelines.ingest import ingest_frame
    from pipelines.monitor import run_monitor
    from pipelines.replay import daily_job, replay_events
    from pipelines.training import evaluate_alias, retrain_use_case, train_use_case
    from registry import lifecycle

    if not 1 <= replay_days <= live_days:
        raise ValueError(f"replay_days must be between 1 and live_days ({live_days}), "
                         f"got {replay_days}")
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

    def features() -> dict[str, int]:
        return compute_feature_tables(spec, settings.events_dir, settings.features_dir / spec.name)

    console.print(f"profile [bold]{settings.profile}[/bold], home {settings.home}")
    drift = Drift(start_day=days)
    world = step("generate", lambda: generate_events(users, days + live_days, seed, drift=drift),
                 lambda r: f"{len(r):,} unlocks of {users} users over {days} + {live_days} days "
                           f"(drift from day {days}: {drift})")
    live_start = pd.Timestamp(world["timestamp"].min()).floor("D") + pd.Timedelta(days=days)
    raw = world[world["timestamp"] < live_start]
    live = world[world["timestamp"] >= live_start]
    replay_start = live_start + pd.Timedelta(days=live_days - replay_days)
    report = step("ingest", lambda: ingest_frame(raw, settings.events_dir,
                                                 settings.user_hash_secret),
                  lambda r: f"{r.rows_written:,} written, {r.duplicates_skipped:,} already there, "
                            f"{r.rows_rejected} rejected")
    if report.errors:
        return False
    step("features", features, lambda r: f"{len(r)} tables, {sum(r.values()):,} rows")
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
    api_key = settings.api_key or secrets.token_hex(16)  # POST /v1/events needs one
    with contextlib.ExitStack() as running:
        url = running.enter_context(running_server(
            settings, spec.name, extra_env={"FEASTFLOW_API_KEY": api_key, **REPLAY_SERVER_ENV}))
        running.enter_context(running_processor(settings, spec.name))
        answers, latencies = step(
            "serve, predict", lambda: _predict_over_http(url, requests),
            lambda r: f"{len(r[0])} answers, p50 {statistics.median(r[1]):.1f} ms over HTTP")

        def live_days_arrive() -> str:
            batch = live[live["timestamp"] < replay_start]
            ingest_frame(batch, settings.events_dir, settings.user_hash_secret)
            daily_job(settings, spec, live_start)
            return f"{len(batch):,} unlocks of {live_start:%Y-%m-%d} .. {replay_start:%Y-%m-%d}"

        step(f"live days: {live_days - replay_days} days arrive in batch", live_days_arrive)

        replayed = step(
            f"live days: replay the last {replay_days} through the server",
            lambda: replay_events(url, api_key, settings, spec, live[live["timestamp"] >=
                                  replay_start], predict_share=0.5, seed=seed,
                                  on_day=lambda day: daily_job(settings, spec,
                                                               day - pd.Timedelta(days=1))),
            lambda r: f"{r.events:,} events, {r.predictions:,} predictions "
                      f"({dict(r.fallbacks)}); events online in p50 "
                      f"{statistics.median(r.visible_ms):.0f} ms")
    # The night after the replayed day: its snapshot goes online, as the scheduler would do,
    # so whatever serves next (the retrained champion, bench/serving.py) reads fresh features.
    step("nightly job: features, materialize", lambda: daily_job(settings, spec, replay_start),
         lambda _: f"tables from the log, online from {replay_start:%Y-%m-%d}")
    monitored = step("monitor", lambda: run_monitor(settings, spec, since=replay_start,
                                                    progress=console.print),
                     lambda r: f"{len(r.alerts)} alerts -> {r.report}")
    retrained = step("retrain", lambda: retrain_use_case(settings, spec, progress=console.print),
                     lambda r: f"challenger v{r.trained.version} "
                               f"{'promoted' if r.decision.passed else 'rejected'}")
    _summary(console, durations, evaluation, trained.version, decision.passed, answers,
             latencies, replayed, monitored, retrained)
    return True


def _predict_over_http(url: str, requests: list[dict[str, Any]], repeat: int = 100
                       ) -> tuple[list[dict[str, Any]], list[float]]:
    with httpx.Client(base_url=url, timeout=60) as client:
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
    return answers, latencies


def _summary(console: Console, durations: list[tuple[str, float, str]],
             evaluation: dict[str, Any], version: str, promoted: bool,
             answers: list[dict[str, Any]], latencies: list[float], replayed: ReplayStats,
             monitored: MonitorResult, retrained: RetrainResult) -> None:
    from pipelines.cli import metrics_table, monitor_table

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
    visible = sorted(replayed.visible_ms)
    console.print(f"POST /v1/events -> the online store, replayed rounds of up to one event per "
                  f"user: p50 {statistics.median(visible):.0f} ms, max {visible[-1]:.0f} ms "
                  f"({replayed.rounds} rounds, {replayed.events:,} events)")
    console.print(monitor_table(monitored.summary, 4))
    for alert in monitored.alerts:
        console.print(f"[red]alert[/red] {alert}")
    verdict = "promoted to champion" if retrained.decision.passed else "rejected"
    console.print(f"retrain: challenger v{retrained.trained.version} {verdict} against "
                  f"v{retrained.champion_version}, both judged on "
                  f"{retrained.trained.report['holdout_start'][:10]} .. "
                  f"{retrained.trained.report['holdout_end'][:10]}:")
    for reason in retrained.decision.reasons:
        console.print(f"  {reason}")
    console.print(f"[bold]monitoring report: {monitored.report}[/bold] "
                  f"(summary.json and metrics.prom beside it)")
