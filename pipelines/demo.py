"""A use case's job end to end, each step timed, then a summary. Two shapes, chosen by the spec:

- a use case with a `generator` and real-time features (the flagship): simulate a world with
  drift, ingest, features, apply, train, evaluate, promote, materialize, serve and predict over
  HTTP, the live days (the last replayed through the server and the stream), monitor, retrain;
- a use case with a `loader` (a public data set): load, ingest, features, apply, train, evaluate
  against its baselines, promote, materialize, serve and predict its last events over HTTP.
"""

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from feastflow.settings import Settings
from feastflow.spec import ModelSpec

if TYPE_CHECKING:
    from pipelines.ingest import IngestReport
    from pipelines.monitoring import MonitorResult
    from pipelines.replay import ReplayStats
    from pipelines.training import RetrainResult


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM (the child logs and flushes on it), then SIGKILL if it has not exited in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def running_server(settings: Settings, use_case: str, timeout_s: float = 240.0,
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
        stop_process(proc, 10)


@contextlib.contextmanager
def running_processor(settings: Settings, use_case: str, timeout_s: float = 300
                      ) -> Iterator[None]:
    """`feastflow stream` in a child process when the stream is a broker's (Redis profile), once
    it has seeded its states from the event log (its marker beside the log: before that, an
    event posted waits for the child's imports and seeding, which took over 120 s on a loaded
    machine); an in-process stream is applied by the server itself."""
    from feastflow.processor import SEEDED_MARKER
    from feastflow.stream import MemoryEventStream, open_event_stream

    stream = open_event_stream(settings, use_case)
    stream.close()
    if isinstance(stream, MemoryEventStream):
        yield
        return
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "--use-case", use_case],
                            env={**os.environ, **settings.as_env()}, stdout=subprocess.DEVNULL)
    try:
        marker = settings.events_dir(use_case) / SEEDED_MARKER
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the stream processor exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream processor did not seed within {timeout_s:.0f} s")
            time.sleep(0.1)
        yield
    finally:
        stop_process(proc, 30)  # on SIGTERM it logs and acknowledges what it read, then exits


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def request_body(spec: ModelSpec, entity: Any, at: pd.Timestamp, context: dict[str, Any]
                 ) -> dict[str, Any]:
    """A prediction request as `POST /v1/{use_case}/predict` takes it (raw entity id)."""
    body = {spec.event_log.entity: _jsonable(entity), "timestamp": at.isoformat(),
            "context": {k: _jsonable(v) for k, v in context.items() if _jsonable(v) is not None}}
    if not spec.per_event:
        body["k"] = spec.top_k
    return body


def demo_requests(spec: ModelSpec, raw: pd.DataFrame, at: pd.Timestamp, n_known: int = 3
                  ) -> list[dict[str, Any]]:
    """Requests for a few real (raw-id) entities in their latest context, plus an unknown one."""
    log = spec.event_log
    latest = raw.sort_values(log.timestamp).groupby(log.entity).tail(1).set_index(log.entity)
    busiest = raw[log.entity].value_counts().index[:n_known].tolist()
    out = [request_body(spec, entity, at, latest.loc[entity, log.context].to_dict())
           for entity in busiest]
    column = log.columns[log.entity]
    if column.type == "string" and column.pattern is None and column.allowed is None:
        out.append(request_body(spec, "someone-new", at, dict(log.example_context)))
    return out


def describe_answer(spec: ModelSpec, response: dict[str, Any]) -> str:
    """One served answer in a few words: the top items, the score and decision, the prediction."""
    if spec.task == "ranking":
        key = spec.serving.items_key or f"{spec.event_log.item}s"
        text = ", ".join(str(entry.get("title", entry[spec.event_log.item]))
                         for entry in response[key])
    elif spec.task == "binary_classification":
        text = f"score {response['score']:.3f}" + (f" -> {response['decision']}"
                                                   if response.get("decision") else "")
    else:
        text = f"{response['prediction']:.1f}"
    return text + (f" ({response['fallback']})" if response.get("fallback") else "")


# The server of the demo's last steps: every prediction logged (monitoring reads them); no
# prediction or feature cache (a replay compresses a day into a minute: a 5-minute cache would
# answer hours of replayed time from one request); a latency budget a replay on a busy laptop
# never exceeds (the 50 ms default turned 45 % of the answers into fallbacks, measuring
# the machine instead of the model).
REPLAY_SERVER_ENV = {"FEASTFLOW_REQUEST_LOG_SAMPLE": "1", "FEASTFLOW_REQUEST_LOG_FLUSH_SECONDS": "1",
                     "FEASTFLOW_PREDICTION_CACHE_TTL_SECONDS": "0",
                     "FEASTFLOW_FEATURE_CACHE_TTL_SECONDS": "0",
                     "FEASTFLOW_LATENCY_BUDGET_MS": "5000"}


class _Steps:
    """Runs named steps, prints each with its duration and a one-line result, keeps them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.durations: list[tuple[str, float, str]] = []

    def __call__(self, name: str, fn: Callable[[], Any], describe: Callable[[Any], str] = str
                 ) -> Any:
        self.console.rule(f"[bold]{name}")
        started = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - started
        note = describe(result)
        self.durations.append((name, elapsed, note))
        self.console.print(f"[green]done[/green] {name} in {elapsed:.1f} s: {note}")
        return result


def _first_champion(step: _Steps, settings: Settings, spec: ModelSpec, console: Console
                    ) -> tuple[Any, dict[str, Any], Any] | None:
    """Features, apply, train, evaluate, promote, materialize: the steps every demo shares.
    None when the gate keeps the first model from becoming champion."""
    from feastflow.spec import lower_is_better
    from pipelines.feast_ops import apply_repo, materialize
    from pipelines.features import compute_feature_tables
    from pipelines.training import evaluate_alias, train_use_case
    from registry import lifecycle

    step("features", lambda: compute_feature_tables(settings, spec),
         lambda r: f"{len(r)} tables, {sum(r.values()):,} rows")
    step("apply", lambda: apply_repo(settings, spec.name), lambda _: f"Feast project {spec.name}")
    trained = step("train", lambda: train_use_case(settings, spec, progress=console.print),
                   lambda r: f"v{r.version} registered as challenger, {r.n_train_events:,} "
                             f"events / {r.n_train_rows:,} rows")
    # the retrieval shape's training ran the whole protocol (baselines included): its report
    evaluate = ((lambda: {**trained.report, "model_version": trained.version})
                if spec.retrieval is not None else
                (lambda: evaluate_alias(settings, spec, lifecycle.CHALLENGER,
                                        progress=console.print)))
    evaluation = step("evaluate", evaluate,
                      lambda r: ", ".join(f"{m} {v:.3f}" for m, v in r["model"].items()))
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    decision = step("promote", lambda: registry.promote(spec.registered_model_name,
                                                        spec.gate_rules(), lower_is_better),
                    lambda d: "passed" if d.passed else "rejected: " + "; ".join(d.reasons))
    if registry.alias_version(spec.registered_model_name, lifecycle.CHAMPION) is None:
        console.print("[red]no champion: the gate rejected the first model[/red]")
        return None
    step("materialize", lambda: materialize(settings, spec.name),
         lambda w: f"{w[0]:%Y-%m-%d} .. {w[1]:%Y-%m-%d} into the {settings.profile} online store")
    return trained, evaluation, decision


def run_demo(settings: Settings, spec: ModelSpec, console: Console, users: int = 150,
             days: int = 56, seed: int = 7, live_days: int = 7, replay_days: int = 1) -> bool:
    """The use case's demo: the live world (generator and real-time features) or its data set
    (loader); True if every step passed."""
    if spec.generator is not None and spec.realtime is not None:
        return run_world_demo(settings, spec, users, days, seed, console, live_days, replay_days)
    if spec.loader is not None:
        return run_loader_demo(settings, spec, console)
    raise ValueError(f"{spec.name} declares neither a `loader` nor a `generator` with "
                     "`realtime`: the demo has no events to start from")


def run_loader_demo(settings: Settings, spec: ModelSpec, console: Console) -> bool:
    """Load the use case's data set, then ingest ... serve its champion and ask it over HTTP."""
    from feastflow.plugins import use_case_function

    if spec.loader is None:
        raise ValueError(f"{spec.name} declares no `loader`: no data set to load")
    step = _Steps(console)
    console.print(f"use case [bold]{spec.name}[/bold] ({spec.task}), profile "
                  f"[bold]{settings.profile}[/bold], home {settings.home}")
    load = use_case_function(spec, spec.loader.module, spec.loader.function)
    raw = step("load", lambda: load(settings.data_dir),
               lambda r: f"{len(r):,} raw events from {settings.data_dir}")
    report = _ingest(step, settings, spec, raw, "rejected by the contract")
    for error in report.errors[:5]:
        console.print(f"[yellow]rejected[/yellow] {error}")
    first = _first_champion(step, settings, spec, console)
    if first is None:
        return False
    trained, evaluation, decision = first
    requests = demo_requests(spec, raw, _after_last_label(spec, raw))
    with running_server(settings, spec.name) as url:
        answers, latencies = _serve_and_predict(step, url, spec, requests)
    console.rule("[bold]summary")
    console.print(_steps_table(step.durations))
    _served_summary(console, spec, evaluation, trained.version, decision.passed, answers,
                    latencies)
    return True


def _ingest(step: _Steps, settings: Settings, spec: ModelSpec, raw: pd.DataFrame,
            rejected: str) -> IngestReport:
    """The `ingest` step: raw events into the event log, under the data contract."""
    from pipelines.ingest import ingest_frame

    return step("ingest", lambda: ingest_frame(raw, spec.event_log,
                                               settings.events_dir(spec.name),
                                               settings.user_hash_secret),
                lambda r: f"{r.rows_written:,} written, {r.duplicates_skipped:,} already there, "
                          f"{r.rows_rejected} {rejected}")


def _after_last_label(spec: ModelSpec, raw: pd.DataFrame) -> pd.Timestamp:
    """A minute after the last label is known: online rows are the latest, stamped up to then."""
    log = spec.event_log
    return (pd.Timestamp(raw[log.timestamp].max()).tz_convert("UTC")
            + pd.Timedelta(log.label_delay) + pd.Timedelta(minutes=1))


def _serve_and_predict(step: _Steps, url: str, spec: ModelSpec, requests: list[dict[str, Any]]
                       ) -> tuple[list[dict[str, Any]], list[float]]:
    """The `serve, predict` step: the demo's requests to the running server, then 100 timed."""
    return step("serve, predict", lambda: _predict_over_http(url, spec, requests),
                lambda r: f"{len(r[0])} answers, p50 {statistics.median(r[1]):.1f} ms over HTTP")


@dataclass(frozen=True)
class _World:
    """A generated world cut at `live_start`: the history, then live days in which it drifts,
    the last of them (from `replay_start`) to be replayed through the server."""

    history: pd.DataFrame
    live: pd.DataFrame
    live_start: pd.Timestamp
    replay_start: pd.Timestamp

    @property
    def batch(self) -> pd.DataFrame:
        """The live days that arrive in batch."""
        return self.live[self.live["timestamp"] < self.replay_start]

    @property
    def replayed(self) -> pd.DataFrame:
        """The live days replayed through the server and the stream."""
        return self.live[self.live["timestamp"] >= self.replay_start]


def run_world_demo(settings: Settings, spec: ModelSpec, users: int, days: int, seed: int,
                   console: Console, live_days: int = 7, replay_days: int = 1) -> bool:
    """Run every step, print each with its duration, end with the summary; True if all passed.

    The world has `days` days of history and `live_days` more in which it drifts. The model is
    trained on the history; the live days arrive, the last `replay_days` of them through the
    running server (a prediction at each sampled event, then the event itself); then
    `monitor` reads what was served and `retrain` decides whether a new model takes over.
    """
    from feastflow.plugins import use_case_function
    from pipelines.monitoring import run_monitor
    from pipelines.replay import daily_job
    from pipelines.training import retrain_use_case

    if not 1 <= replay_days <= live_days:
        raise ValueError(f"replay_days must be between 1 and live_days ({live_days}), "
                         f"got {replay_days}")
    if spec.generator is None:
        raise ValueError(f"{spec.name} declares no `generator`: nothing to simulate")
    generate_world = use_case_function(spec, spec.generator.module, spec.generator.function)
    step = _Steps(console)
    console.print(f"profile [bold]{settings.profile}[/bold], home {settings.home}")
    world = _generate(step, generate_world, users, days, seed, live_days, replay_days)
    if _ingest(step, settings, spec, world.history, "rejected").errors:
        return False
    first = _first_champion(step, settings, spec, console)
    if first is None:
        return False
    trained, evaluation, decision = first
    answers, latencies, replayed = _live_days(step, settings, spec, world, evaluation, seed,
                                              replay_days)
    # The night after the replayed day: its snapshot goes online, as the scheduler would do,
    # so whatever serves next (the retrained champion, bench/serving.py) reads fresh features.
    step("nightly job: features, materialize",
         lambda: daily_job(settings, spec, world.replay_start),
         lambda _: f"tables from the log, online from {world.replay_start:%Y-%m-%d}")
    monitored = step("monitor", lambda: run_monitor(settings, spec, since=world.replay_start,
                                                    progress=console.print),
                     lambda r: f"{len(r.alerts)} alerts -> {r.report}")
    retrained = step("retrain", lambda: retrain_use_case(settings, spec, progress=console.print),
                     lambda r: f"challenger v{r.trained.version} "
                               f"{'promoted' if r.decision.passed else 'rejected'}")
    _summary(console, spec, step.durations, evaluation, trained.version, decision.passed,
             answers, latencies, replayed, monitored, retrained)
    return True


def _generate(step: _Steps, generate_world: Callable[..., pd.DataFrame], users: int, days: int,
              seed: int, live_days: int, replay_days: int) -> _World:
    """The `generate` step: `days` of history and `live_days` with drift, cut in three."""
    world = step("generate", lambda: generate_world(users=users, days=days + live_days, seed=seed,
                                                    drift_day=days),
                 lambda r: f"{len(r):,} events of {users} over {days} + {live_days} days "
                           f"(drift from day {days})")
    live_start = pd.Timestamp(world["timestamp"].min()).floor("D") + pd.Timedelta(days=days)
    return _World(world[world["timestamp"] < live_start], world[world["timestamp"] >= live_start],
                  live_start, live_start + pd.Timedelta(days=live_days - replay_days))


def _live_days(step: _Steps, settings: Settings, spec: ModelSpec, world: _World,
               evaluation: dict[str, Any], seed: int, replay_days: int
               ) -> tuple[list[dict[str, Any]], list[float], ReplayStats]:
    """With the server and the stream processor running: the demo's predictions, the live days
    in batch, then the last ones replayed through the server (events and predictions)."""
    from pipelines.ingest import ingest_frame
    from pipelines.replay import daily_job, replay_events

    at = pd.Timestamp(evaluation["holdout_end"]) + pd.Timedelta(hours=8, minutes=5)
    requests = demo_requests(spec, world.history, at)
    api_key = settings.api_key or secrets.token_hex(16)  # POST /v1/events needs one
    live_start, replay_start = world.live_start, world.replay_start

    def live_days_arrive() -> str:
        batch = world.batch
        ingest_frame(batch, spec.event_log, settings.events_dir(spec.name),
                     settings.user_hash_secret)
        daily_job(settings, spec, live_start)
        return f"{len(batch):,} events of {live_start:%Y-%m-%d} .. {replay_start:%Y-%m-%d}"

    with contextlib.ExitStack() as running:
        url = running.enter_context(running_server(
            settings, spec.name, extra_env={"FEASTFLOW_API_KEY": api_key, **REPLAY_SERVER_ENV}))
        running.enter_context(running_processor(settings, spec.name))
        answers, latencies = _serve_and_predict(step, url, spec, requests)
        step(f"live days: {(replay_start - live_start).days} days arrive in batch",
             live_days_arrive)
        replayed = step(
            f"live days: replay the last {replay_days} through the server",
            lambda: replay_events(url, api_key, settings, spec, world.replayed,
                                  predict_share=0.5, seed=seed,
                                  on_day=lambda day: daily_job(settings, spec,
                                                               day - pd.Timedelta(days=1))),
            lambda r: f"{r.events:,} events, {r.predictions:,} predictions "
                      f"({dict(r.fallbacks)}); events online in p50 "
                      f"{statistics.median(r.visible_ms):.0f} ms")
    return answers, latencies, replayed


def _predict_over_http(url: str, spec: ModelSpec, requests: list[dict[str, Any]],
                       repeat: int = 100) -> tuple[list[dict[str, Any]], list[float]]:
    path = f"/v1/{spec.name}/predict"
    with httpx.Client(base_url=url, timeout=60) as client:
        answers = []
        for body in requests:
            response = client.post(path, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")
            answers.append({"request": body, "response": response.json()})
        latencies = []
        for i in range(repeat):  # client-side round trips, one connection
            started = time.perf_counter()
            client.post(path, json=requests[i % len(requests)]).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return answers, latencies


def _steps_table(durations: list[tuple[str, float, str]]) -> Table:
    steps = Table(title="steps")
    steps.add_column("step")
    steps.add_column("seconds", justify="right")
    steps.add_column("result")
    for name, seconds, note in durations:
        steps.add_row(name, f"{seconds:.1f}", note)
    steps.add_row("total", f"{sum(d[1] for d in durations):.1f}", "")
    return steps


def _served_summary(console: Console, spec: ModelSpec, evaluation: dict[str, Any], version: str,
                    promoted: bool, answers: list[dict[str, Any]], latencies: list[float]) -> None:
    from pipelines.cli import metrics_table

    console.print(metrics_table(evaluation))
    console.print(f"model registry: {spec.name} v{version} "
                  f"{'is champion (alias champion)' if promoted else 'stayed challenger'}")
    preds = Table(title="predictions answered by the running server")
    for column in (spec.event_log.entity, "time", "context", "answer", "model", "server ms"):
        preds.add_column(column)
    for answer in answers:
        body, response = answer["request"], answer["response"]
        context = ", ".join(f"{k}={v}" for k, v in body["context"].items())
        preds.add_row(str(body[spec.event_log.entity]), body["timestamp"][:16], context,
                      describe_answer(spec, response), f"v{response['model_version']}",
                      f"{response['latency_ms']:.1f}")
    console.print(preds)
    console.print(f"/v1/{spec.name}/predict round trip over HTTP: p50 "
                  f"{statistics.median(latencies):.1f} ms, p95 "
                  f"{sorted(latencies)[int(len(latencies) * 0.95) - 1]:.1f} ms "
                  f"({len(latencies)} requests)")


def _summary(console: Console, spec: ModelSpec, durations: list[tuple[str, float, str]],
             evaluation: dict[str, Any], version: str, promoted: bool,
             answers: list[dict[str, Any]], latencies: list[float], replayed: ReplayStats,
             monitored: MonitorResult, retrained: RetrainResult) -> None:
    from pipelines.cli import monitor_table

    console.rule("[bold]summary")
    console.print(_steps_table(durations))
    _served_summary(console, spec, evaluation, version, promoted, answers, latencies)
    visible = sorted(replayed.visible_ms)
    console.print(f"POST /v1/events -> the online store, replayed rounds of up to one event per "
                  f"user: p50 {statistics.median(visible):.0f} ms, max {visible[-1]:.0f} ms "
                  f"({replayed.rounds} rounds, {replayed.events:,} events)")
    console.print(monitor_table(monitored.summary, spec.top_k))
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
