"""The `feastflow` command line: every pipeline step runs alone, `demo` runs them all."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final

import typer
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from feastflow.errors import FeastflowError, InputError
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, load_spec

console = Console(stderr=True)
log = logging.getLogger("feastflow.cli")
# What a user can cause and fix (a missing file, a bad value): reported as one line, exit 2.
# feastflow's own errors carry their exit code and hint; anything else is a bug: a traceback.
USER_ERRORS: Final = (FeastflowError, FileNotFoundError, ValueError, KeyError)


class ReportedErrorsGroup(TyperGroup):
    """Every command's expected failures reported in one place: message, hint, exit code."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # click in typer
        """Run the command; a user error becomes its message in red, its hint, and its exit code."""
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            log.debug("command failed", exc_info=True)  # the traceback, for FEASTFLOW_LOG_LEVEL=DEBUG
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            console.print(message, style="red", markup=False, highlight=False)
            if hint := getattr(e, "hint", ""):
                console.print(f"hint: {hint}", markup=False, highlight=False)
            raise typer.Exit(getattr(e, "exit_code", 2)) from e


app = typer.Typer(cls=ReportedErrorsGroup, add_completion=False, no_args_is_help=True,
                  help="feastflow: Feast features -> DuckDB training sets -> MLflow -> serving.")
UseCase = Annotated[str | None, typer.Option(
    "--use-case", "-u", help="folder under feature_repo/ (default: FEASTFLOW_USE_CASE)")]


# Libraries whose own deprecation notices say nothing a user of this CLI can act on.
QUIET_DEPRECATIONS: Final = frozenset({"mlflow", "sqlalchemy", "alembic", "ibis"})
# Feast's note on every on-demand view: the use cases declare them on purpose.
QUIET_MESSAGES: Final = ("On demand feature view is an experimental",)
LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"  # serving/logs.py's text


def _is_quiet_deprecation(category: type[Warning], filename: str) -> bool:
    """A deprecation notice of a library in QUIET_DEPRECATIONS: its class or the file raising it."""
    if not issubclass(category, DeprecationWarning | PendingDeprecationWarning | FutureWarning):
        return False
    if category.__module__.partition(".")[0] in QUIET_DEPRECATIONS:  # SADeprecationWarning
        return True
    parts = Path(filename).parts
    return "site-packages" in parts[:-1] and parts[parts.index("site-packages") + 1] in QUIET_DEPRECATIONS


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """warnings.showwarning for the CLI: drop the quiet deprecations, log the rest (timestamped)."""
    if _is_quiet_deprecation(category, filename) or str(message).startswith(QUIET_MESSAGES):
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes (a test runner swaps and closes it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler.__init__ and setStream assign it: always follow sys.stderr instead


def configure_cli_logging(level: str = "WARNING") -> None:
    """One timestamped text handler on the root logger, MLflow's logs and Python's warnings into it.

    Called once per CLI process. Warnings are filtered where they are shown, not with
    warnings.filterwarnings: Feast's modules call `warnings.simplefilter("once",
    DeprecationWarning)` on import, which goes in front of any filter installed before.
    """
    # MLflow installs its own handler and format on import unless told not to.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in [h for h in root.handlers if getattr(h, "_feastflow", False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # Tagged as serving/logs.py tags its handler: `serve` replaces this one with the server's.
    handler._feastflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    for name in ("feastflow", "pipelines", "registry"):  # our own INFO lines are worth seeing
        logging.getLogger(name).setLevel(logging.INFO)
    warnings.showwarning = _show_warning


def _version() -> str:
    """The installed feastflow's version (its package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("feastflow")
    except PackageNotFoundError:  # a checkout on sys.path without `pip install -e .`
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"feastflow {_version()}")
        raise typer.Exit()


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="state folder (FEASTFLOW_HOME)")] = None,
    profile: Annotated[str | None, typer.Option(
        help="embedded, redis or production (FEASTFLOW_PROFILE)")]
    = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="print the version and exit")]
    = False,
) -> None:
    """Global options override the environment for this command and the processes it starts."""
    configure_cli_logging()
    if home is not None:
        os.environ["FEASTFLOW_HOME"] = str(home.resolve())
    if profile is not None:
        os.environ["FEASTFLOW_PROFILE"] = profile
    try:
        ctx.obj = Settings()
    except ValueError as e:
        raise InputError(f"invalid settings: {e}") from e
    if ctx.obj.profile == "production":  # Feast's and MLflow's databases, made on first use
        from feastflow.postgres import ensure_databases

        try:
            ensure_databases(ctx.obj.postgres_url)
        except (ConnectionError, ValueError) as e:
            raise InputError(f"production profile: {e}") from e


def _spec(settings: Settings, use_case: str | None) -> ModelSpec:
    return load_spec(use_case or settings.use_case, settings.feature_repo)


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _option_value(text: str) -> object:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--set")
    return key, yaml.safe_load(value)


@app.command()
def generate(
    ctx: typer.Context,
    use_case: UseCase = None,
    users: Annotated[int, typer.Option(min=1, help="number of simulated entities")] = 150,
    days: Annotated[int, typer.Option(min=1, help="days of activity")] = 56,
    seed: Annotated[int, typer.Option(help="same seed, same events")] = 7,
    start: Annotated[str, typer.Option(help="first day (UTC)")] = "2026-01-05",
    out: Annotated[Path | None, typer.Option(help=".parquet or .csv; default HOME/raw/")] = None,
    drift_day: Annotated[int | None, typer.Option(
        min=1, help="day index from which the world drifts (default: no drift)")] = None,
    options: Annotated[list[str] | None, typer.Option(
        "--set", help="a generator option KEY=VALUE (see the use case's generator), repeatable"
    )] = None,
) -> None:
    """Simulate the use case's world (its model.yaml `generator`) into raw events (raw ids:
    ingest hashes them)."""
    from feastflow.plugins import use_case_function

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    if spec.generator is None:
        raise InputError(f"{spec.name} declares no `generator` in its model.yaml")
    if drift_day is not None and drift_day >= days:
        raise typer.BadParameter(f"must be < --days ({days}), got {drift_day}",
                                 param_hint="--drift-day")
    extra = dict(_option_value(o) for o in options or [])
    name = f"{spec.name}_u{users}_d{days}_s{seed}"
    if drift_day is not None:
        name += f"_drift{drift_day}" + "".join(f"_{k}{v}" for k, v in sorted(extra.items()))
    out = out or settings.home / "raw" / f"{name}.parquet"
    generate_world = use_case_function(spec, spec.generator.module, spec.generator.function)
    with _bar() as bar:
        task = bar.add_task("simulating", total=users)
        try:
            events = generate_world(users=users, days=days, seed=seed, start=start,
                                    drift_day=drift_day, on_user=lambda _: bar.advance(task),
                                    **extra)
        except TypeError as e:  # a --set the generator does not take
            raise InputError(str(e)) from e
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".csv":
        events.to_csv(tmp, index=False)
    else:
        events.to_parquet(tmp, index=False)
    tmp.replace(out)
    console.print(f"{len(events):,} events of {users} over {days} days -> {out}")
    typer.echo(str(out))


@app.command()
def ingest(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(
        help="CSV or Parquet in the use case's raw event schema (default: what the spec's "
             "`loader` reads from the data folder)")] = None,
    use_case: UseCase = None,
    strict: Annotated[bool, typer.Option(help="reject the whole file if any row is bad")] = False,
    max_errors: Annotated[int, typer.Option(help="errors to print")] = 20,
) -> None:
    """Validate against the use case's data contract, hash its personal columns, append to its
    event log; exit 1 if any row was rejected."""
    from feastflow.plugins import use_case_function
    from pipelines.ingest import ingest_file, ingest_frame

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    if path is None:
        if spec.loader is None:
            raise InputError(f"{spec.name} declares no `loader`: give the file to ingest")
        raw = use_case_function(spec, spec.loader.module, spec.loader.function)(settings.data_dir)
        report = ingest_frame(raw, spec.event_log, settings.events_dir(spec.name),
                              settings.user_hash_secret, strict=strict)
    else:
        report = ingest_file(path, spec.event_log, settings.events_dir(spec.name),
                             settings.user_hash_secret, strict=strict)
    for error in report.errors[:max_errors]:
        console.print(f"[yellow]rejected[/yellow] {error}")
    if len(report.errors) > max_errors:
        console.print(f"... and {len(report.errors) - max_errors} more errors")
    console.print(
        f"read {report.rows_read:,} rows: wrote {report.rows_written:,} into "
        f"{len(report.partitions)} partitions, skipped {report.duplicates_skipped:,} already "
        f"ingested, rejected {report.rows_rejected:,}"
        + (" (strict: nothing written)" if strict and report.errors else "")
    )
    if report.errors:
        raise typer.Exit(1)


@app.command()
def features(ctx: typer.Context, use_case: UseCase = None) -> None:
    """Compute the use case's batch feature tables from the event log (SQL and real-time fold)."""
    from pipelines.features import compute_feature_tables, feature_table_names

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    with _bar() as bar:
        task = bar.add_task("feature tables", total=len(feature_table_names(spec)))
        rows = compute_feature_tables(settings, spec, on_table=lambda name, n: bar.advance(task))
    for name, n in rows.items():
        console.print(f"  {name}: {n:,} rows")


@app.command()
def apply(ctx: typer.Context, use_case: UseCase = None) -> None:
    """Register the use case's Feast definitions as its own Feast project (`feast apply`)."""
    from pipelines.feast_ops import apply_repo

    settings = _settings(ctx)
    apply_repo(settings, _spec(settings, use_case).name)


@app.command()
def materialize(
    ctx: typer.Context,
    use_case: UseCase = None,
    start: Annotated[datetime | None, typer.Option(help="default: the first feature row")] = None,
    end: Annotated[datetime | None, typer.Option(help="default: past the last feature row")]
    = None,
) -> None:
    """Load the use case's latest feature values into the online store (`feast materialize`)."""
    from pipelines.feast_ops import materialize as run

    settings = _settings(ctx)
    first, last = run(settings, _spec(settings, use_case).name, start, end)
    console.print(f"materialized {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}")


@app.command()
def train(ctx: typer.Context, use_case: UseCase = None) -> None:
    """Train on the spec's window, log the run to MLflow, register the model as challenger."""
    from pipelines.training import train_use_case

    settings = _settings(ctx)
    result = train_use_case(settings, _spec(settings, use_case), progress=console.print)
    console.print(f"registered version {result.version} as challenger (run {result.run_id})")
    typer.echo(json.dumps({"model_version": result.version, **result.report}))


@app.command()
def evaluate(
    ctx: typer.Context,
    use_case: UseCase = None,
    alias: Annotated[str, typer.Option(help="champion or challenger")] = "champion",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    protocol: Annotated[str | None, typer.Option(
        help="run a published protocol of model.yaml `protocols:` instead (fits per fold)")] = None,
    validation: Annotated[bool, typer.Option(
        "--validation", help="with --protocol: its validation folds, not its test folds")] = False,
    predictions: Annotated[Path | None, typer.Option(
        help="with --protocol, or for a retrieval use case: write every test prediction to this "
             "CSV")] = None,
) -> None:
    """Evaluate the aliased model on the holdout against the baselines, or run a protocol."""
    from pipelines.training import evaluate_alias

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    if spec.retrieval is not None:
        _evaluate_retrieval(settings, spec, predictions, as_json)
        return
    if protocol is not None:
        _evaluate_protocol(settings, spec, protocol, validation, predictions, as_json)
        return
    report = evaluate_alias(settings, spec, alias,
                            progress=lambda m: console.print(m))
    if as_json:
        typer.echo(json.dumps(report))
    else:
        console.print(metrics_table(report))


def _evaluate_protocol(settings: Settings, spec: ModelSpec, name: str, validation: bool,
                       predictions: Path | None, as_json: bool) -> None:
    from pipelines.protocols import run_protocol, write_predictions

    report, scored = run_protocol(settings, spec, name, validation,
                                  progress=lambda m: console.print(m))
    if predictions is not None:
        write_predictions(scored, predictions)
        console.print(f"{len(scored):,} predictions written to {predictions}")
    if as_json:
        typer.echo(json.dumps(report))
        return
    console.print(_model_and_baselines_table(
        f"{spec.name}: protocol {name}, mean over {len(report['model']['folds'])} "
        f"{report.get('folds_kind', 'test')} folds", report,
        [m for m in report["model"] if m != "folds"]))


def _evaluate_retrieval(settings: Settings, spec: ModelSpec, predictions: Path | None,
                        as_json: bool) -> None:
    from pipelines.retrieval import evaluate_retrieval, write_predictions_csv

    report, lists = evaluate_retrieval(settings, spec, progress=lambda m: console.print(m))
    if predictions is not None:
        write_predictions_csv(lists, predictions)
        console.print(f"{len(lists):,} ranked items written to {predictions}")
    if as_json:
        typer.echo(json.dumps(report))
        return
    console.print(_model_and_baselines_table(
        f"{spec.name}: test fold, {report['n_users']} users with relevant items", report,
        list(report["model"])))


def _model_and_baselines_table(title: str, report: dict, metric_names: list[str]) -> Table:
    """One row for the model and one per baseline, a column per metric."""
    table = Table(title=title)
    table.add_column("")
    for metric in metric_names:
        table.add_column(metric)
    for row_name, values in {"model": report["model"], **report["baselines"]}.items():
        table.add_row(row_name, *(f"{values[m]:.4f}" for m in metric_names))
    return table


def metrics_table(report: dict) -> Table:
    """Holdout metrics of the model and the baselines, as a table (primary metric first)."""
    fold = (f"holdout {report['holdout_start'][:10]} .. {report['holdout_end'][:10]}, "
            f"{report['n_holdout']:,} events" if "holdout_start" in report else  # a retrieval
            f"test fold, {report['n_users']:,} users with relevant items")     # protocol's report
    table = Table(title=f"{report['use_case']} ({report['task']}): {fold}")
    metrics = [report["primary_metric"], *(m for m in report["model"]
                                           if m != report["primary_metric"])]
    table.add_column("")
    for metric in metrics:
        table.add_column(metric + (" (primary)" if metric == report["primary_metric"] else ""))
    rows = {f"model v{report.get('model_version', '?')}": report["model"], **report["baselines"]}
    for name, values in rows.items():
        table.add_row(name, *(f"{values[m]:.4f}" if m in values else "" for m in metrics))
    return table


@app.command()
def promote(
    ctx: typer.Context,
    use_case: UseCase = None,
    version: Annotated[str | None, typer.Option(help="default: the challenger")] = None,
) -> None:
    """Move `champion` to the challenger if the spec's gate passes; exit 1 if it does not."""
    from feastflow.spec import lower_is_better
    from registry import lifecycle

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    decision = registry.promote(spec.registered_model_name, spec.gate_rules(), lower_is_better,
                                version)
    for reason in decision.reasons:
        console.print(f"  {reason}")
    champion = registry.alias_version(spec.registered_model_name, lifecycle.CHAMPION)
    console.print(("[green]promoted[/green]" if decision.passed else "[red]rejected[/red]")
                  + f": champion is v{champion}")
    if not decision.passed:
        raise typer.Exit(1)


@app.command()
def rollback(ctx: typer.Context, use_case: UseCase = None) -> None:
    """Move `champion` back to the version the last promotion replaced."""
    from registry import lifecycle

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    version = lifecycle.Registry(settings.tracking_uri).rollback(spec.registered_model_name)
    console.print(f"champion is v{version} again")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="processes sharing the port")] = 1,
    use_case: UseCase = None,
) -> None:
    """Start the prediction server (champion and challenger from the registry, hot reload).

    With several workers each process holds its own models and caches; each polls the registry,
    and POST /admin/reload reaches the one process that answers it. Their metrics go through
    FEASTFLOW_METRICS_MULTIPROC_DIR (default $FEASTFLOW_HOME/prometheus/<port>, emptied at start), so
    any worker's /metrics counts every worker's requests.
    """
    import uvicorn

    from registry.lifecycle import Registry
    from serving.metrics import MULTIPROCESS_DIR_VARIABLE, start_multiprocess_dir
    from serving.server import uvicorn_options
    from serving.settings import ServingSettings

    settings = _settings(ctx)
    if workers > 1:
        start_multiprocess_dir(os.environ.get(MULTIPROCESS_DIR_VARIABLE)
                               or str(settings.home / "prometheus" / str(port)))
    if settings.mlflow_tracking_uri is not None:  # the server refuses it too; say it plainly here
        Registry(settings.tracking_uri).require_database()
    os.environ.update({"FEASTFLOW_USE_CASE": use_case or settings.use_case,
                       "FEASTFLOW_HOST": host,
                       "FEASTFLOW_PORT": str(port)})
    # httptools with head/body deadlines and a connection limit (serving/server.py)
    uvicorn.run("serving.app:create_app", factory=True, host=host, port=port, workers=workers,
                loop="uvloop", log_level="warning", access_log=False, log_config=None,
                proxy_headers=False, server_header=False, **uvicorn_options(ServingSettings()))


@app.command()
def stream(
    ctx: typer.Context,
    use_case: UseCase = None,
    consumer: Annotated[str | None, typer.Option(help="this processor's name in the group")] = None,
    idle_exit: Annotated[float | None, typer.Option(
        help="exit after the stream has been empty this many seconds (replays, tests)")] = None,
) -> None:
    """Process the event stream: real-time features to the online store, events to the offline log.

    Redis profile only (the embedded server runs the processor in its own process). SIGTERM or
    Ctrl-C stops it after the batch in hand, with everything it read logged and acknowledged.
    """
    import signal
    import threading
    import time

    from feastflow.processor import ProcessorStats, build_processor

    settings = _settings(ctx)
    if not settings.online_redis:
        raise InputError("`feastflow stream` reads a Redis Stream: set FEASTFLOW_PROFILE=redis "
                         "(the embedded `feastflow serve` processes events in process)")
    if consumer:
        settings = settings.model_copy(update={"stream_consumer": consumer})
    processor = build_processor(settings, _spec(settings, use_case))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last_event = time.monotonic()
    last_applied = -1

    def progress(stats: ProcessorStats) -> None:
        nonlocal last_event, last_applied
        now = time.monotonic()
        if stats.applied + stats.redelivered != last_applied:
            last_applied, last_event = stats.applied + stats.redelivered, now
            rate = stats.applied / max(now - stats.started, 1e-9)
            bar.update(task, description=f"applied {stats.applied:,} ({rate:,.0f}/s), "
                       f"logged {stats.logged:,}, rows pushed {stats.rows_pushed:,}")
        if idle_exit is not None and now - last_event >= idle_exit:
            stop.set()

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("waiting for events", total=None)
        stats = processor.run(stop, on_progress=progress)
    console.print(f"stopped: {stats.applied:,} events applied, {stats.redelivered:,} re-read and "
                  f"already applied, {stats.logged:,} appended to the event log, "
                  f"{stats.already_logged:,} found there already")


@app.command()
def precompute(
    ctx: typer.Context,
    use_case: UseCase = None,
    top: Annotated[int, typer.Option(min=1, help="how many of the busiest users")] = 1000,
    start: Annotated[datetime | None, typer.Option(help="first hour (UTC); default: now")] = None,
    k: Annotated[int, typer.Option(min=1, max=20)] = 4,
) -> None:
    """Precompute 24 hours of predictions for the busiest users (bundles, user_hour fallback)."""
    from pipelines.precompute import precompute as run

    settings = _settings(ctx)
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("score", total=None)
        result = run(settings, _spec(settings, use_case), top, start, k,
                     progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"{result.known_users} of {result.users} users with bundles from "
                  f"{result.start:%Y-%m-%d %H:00} (model v{result.model_version}) -> {result.path}")
    console.print("a running server loads them on `POST /admin/reload`")


@app.command()
def replay(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(
        help="raw events (CSV or Parquet), e.g. from generate; default: the use case's loader")]
    = None,
    url: Annotated[str, typer.Option(help="the running server")] = "http://127.0.0.1:8000",
    predict_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of events "
                                                 "that ask for a prediction first")] = 1.0,
    since: Annotated[datetime | None, typer.Option(help="replay events from this time (UTC)")]
    = None,
    days: Annotated[int | None, typer.Option(min=1, help="replay this many days from --since")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="a classifier: print its online "
                                          "figures beside the offline ones as one JSON object")]
    = False,
    use_case: UseCase = None,
) -> None:
    """Replay events through a running server in time order: predict at each event, then post it.

    At each midnight the daily job runs (feature tables, materialize). A per-event use case
    (classification, regression) keeps its batch views online as of each event instead, as
    offline reads them: its feature tables are computed once, through the replay's last day
    (a label-delayed window needs only labels known before: replay at most the label delay),
    and each round of events first brings the batch views online up to its start; a new round
    starts where a row moved meanwhile. Serve with
    FEASTFLOW_REQUEST_LOG_SAMPLE=1 so that `feastflow monitor` sees every prediction, and with
    FEASTFLOW_FEATURE_CACHE_TTL_SECONDS=0 and FEASTFLOW_PREDICTION_CACHE_TTL_SECONDS=0: a
    replay compresses hours into seconds, a cache would answer them from stale rows. A
    classifier's replay ends with its online AP and CP@100 beside the same model's offline
    figures on the same events (the log the processor wrote folded into the feature tables).
    """
    import pandas as pd

    from pipelines.features import compute_feature_tables
    from pipelines.replay import daily_job, online_beside_offline, replay_events, wait_for_log

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    if not settings.api_key:
        raise InputError("set FEASTFLOW_API_KEY to the server's key: POST /v1/events needs it")
    if path is not None:
        events = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    elif spec.loader is not None:
        from feastflow.plugins import use_case_function

        events = use_case_function(spec, spec.loader.module, spec.loader.function)(
            settings.data_dir)
    else:
        raise InputError(f"{spec.name} has no loader: give the events' PATH")
    ts = spec.event_log.timestamp
    events[ts] = pd.to_datetime(events[ts], utc=True)
    if since is not None:  # typer gives a naive datetime: UTC, as the help says
        events = events[events[ts] >= pd.Timestamp(since, tz="UTC")]
    if days is not None:
        if since is None:
            raise InputError("--days needs --since")
        events = events[events[ts] < pd.Timestamp(since, tz="UTC") + pd.Timedelta(days=days)]
    compare = spec.task == "binary_classification"

    def nightly(day: pd.Timestamp) -> None:
        daily_job(settings, spec, day - pd.Timedelta(days=1))

    if spec.per_event and len(events):
        delay = spec.event_log.label_delay or pd.Timedelta(0)
        if events[ts].max() - events[ts].min() > delay:
            console.print(f"[yellow]the replay spans more than the label delay ({delay}): "
                          "its later rows miss labels of replayed events, offline has them")
        with console.status("feature tables through the replay's last day"):
            compute_feature_tables(settings, spec, through=events[ts].max().to_pydatetime())

    with _bar() as bar:
        task = bar.add_task("replaying events", total=len(events))
        stats = replay_events(url, settings.api_key, settings, spec, events, predict_share,
                              on_day=None if spec.per_event else nightly,
                              progress=lambda n: bar.advance(task, n),
                              keep_answers=compare, batch_views_as_of=spec.per_event)
    console.print(f"{stats.events:,} events and {stats.predictions:,} predictions in "
                  f"{stats.seconds:.0f} s ({stats.rounds:,} rounds, {stats.days} daily jobs, "
                  f"{stats.materializations:,} materializations); answers: "
                  f"{dict(stats.fallbacks)}")
    if compare and stats.answers:
        wait_for_log(settings, spec, events[spec.event_log.event_id].astype(str).tolist())
        compute_feature_tables(settings, spec)
        report = online_beside_offline(settings, spec, stats)
        report.update(replay_seconds=round(stats.seconds, 1), rounds=stats.rounds,
                      rounds_ended_by_rows=stats.rounds_ended_by_rows,
                      materializations=stats.materializations)
        print(json.dumps(report) if as_json else report)


@app.command()
def monitor(
    ctx: typer.Context,
    use_case: UseCase = None,
    since: Annotated[datetime | None, typer.Option(help="window start (UTC); default: until - "
                                                   "monitor.window_days")] = None,
    until: Annotated[datetime | None, typer.Option(help="window end (UTC); default: the newest "
                                                   "served request")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for report.html, summary.json, "
                                             "metrics.prom; default HOME/monitoring/<use case>")]
    = None,
) -> None:
    """Drift, skew, online accuracy per variant, data quality; exit 1 when a threshold is crossed.

    Run `feastflow features` first so that the skew check sees the newest events offline.
    """
    from pipelines.monitoring import run_monitor

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    result = run_monitor(settings, spec, out, since, until, progress=console.print)
    console.print(monitor_table(result.summary, spec.top_k))
    for alert in result.alerts:
        console.print(f"[red]alert[/red] {alert}")
    for warning in result.summary["warnings"]:
        console.print(f"[yellow]warning[/yellow] {warning}")
    console.print(f"report {result.report}\nsummary {result.summary_file}\n"
                  f"gauges {result.metrics_file}")
    if result.alerts:
        raise typer.Exit(1)


def monitor_table(summary: dict, top_k: int) -> Table:
    """The monitor's headline numbers, as a table."""
    table = Table(title=f"monitor {summary['window']['start'][:16]} .. "
                  f"{summary['window']['end'][:16]}: {summary['served_requests']:,} served")
    table.add_column("check")
    table.add_column("reading")
    for variant, entry in summary["online_accuracy"].items():
        table.add_row(f"online accuracy, {variant}",
                      f"top-1 {entry['top1']['rate']:.3f}, top-{top_k} "
                      f"{entry[f'top{top_k}']['rate']:.3f} (n={entry['top1']['n']:,})")
    exempt = set(summary["thresholds"]["drift_exempt"])
    drift = {k: v for k, v in summary["feature_drift"].items() if k not in exempt}
    worst = ", ".join(f"{k} {v:.2f}" for k, v in list(drift.items())[:3])
    table.add_row("feature drift (PSI, largest)", worst or "n/a")
    table.add_row("prediction drift (PSI)", f"{summary['prediction_drift']}")
    skew = summary["skew"]
    table.add_row("training/serving skew", f"{skew['mismatch_rate']:.3%} of "
                  f"{skew['compared_values']:,} values" if skew["requests"] else skew["note"])
    quality = summary["data_quality"]
    table.add_row("event volume", f"{quality['volume_ratio']:.2f}x the usual")
    table.add_row("new values", "; ".join(f"{k}: {', '.join(v)}" for k, v
                                          in quality["new_categories"].items()) or "none")
    return table


@app.command()
def retrain(
    ctx: typer.Context,
    use_case: UseCase = None,
    refresh_features: Annotated[bool, typer.Option(
        help="recompute the feature tables from the event log first")] = True,
) -> None:
    """Train on the latest window, judge both models on the latest days, promote if the gate passes.

    Exit 1 when the champion stays. Both models' metrics and the decision go on their versions.
    """
    from pipelines.features import compute_feature_tables
    from pipelines.training import retrain_use_case

    settings = _settings(ctx)
    spec = _spec(settings, use_case)
    if refresh_features:
        compute_feature_tables(settings, spec)
    result = retrain_use_case(settings, spec, progress=console.print)
    for reason in result.decision.reasons:
        console.print(f"  {reason}")
    verdict = "[green]promoted[/green]" if result.decision.passed else "[red]rejected[/red]"
    console.print(f"{verdict}: challenger v{result.trained.version} against champion "
                  f"v{result.champion_version} on {result.trained.report['holdout_start'][:10]} "
                  f".. {result.trained.report['holdout_end'][:10]}")
    typer.echo(json.dumps({"challenger": result.trained.version,
                           "champion": result.champion_version,
                           "promoted": result.decision.passed,
                           "challenger_metrics": result.challenger_metrics,
                           "champion_metrics": result.champion_metrics}))
    if not result.decision.passed:
        raise typer.Exit(1)


@app.command()
def demo(
    ctx: typer.Context,
    use_case: UseCase = None,
    users: Annotated[int, typer.Option(min=1, help="generated worlds: entities")] = 150,
    days: Annotated[int, typer.Option(min=1, help="generated worlds: days of history the first "
                                      "model sees")] = 56,
    live_days: Annotated[int, typer.Option(min=1, help="generated worlds: days after it, in "
                                           "which the world drifts")] = 7,
    replay_days: Annotated[int, typer.Option(min=1, help="generated worlds: the last live days "
                                             "replayed through the server")] = 1,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """The use case end to end: its data (generated world or data set) ... served over HTTP."""
    from pipelines.demo import run_demo

    settings = _settings(ctx)
    ok = run_demo(settings, _spec(settings, use_case), console, users, days, seed, live_days,
                  replay_days)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    app()
