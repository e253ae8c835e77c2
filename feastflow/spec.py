"""The model spec: a use case declared as data (`feature_repo/<use_case>/model.yaml`).

Pipelines read the spec and never name a use case; adding one means adding a folder.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from feastflow.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TASKS = ("ranking", "binary_classification", "regression")
# Metrics where smaller is better; every other metric is better when larger.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "mape", "log_loss", "brier"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """`30d`, `6h`, `15m`, `90s`, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a duration: use e.g. 30d, 6h, 15m, 90s or 0")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
DEFAULT_MAX_LENGTH = 128  # characters of a string column that declares no max_length


def parse_instant(value: Any) -> datetime:
    """An aware datetime, or a date read as its midnight UTC; a naive datetime is refused."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value or " " in value.strip() \
                else date.fromisoformat(value)
        except ValueError as e:
            raise ValueError(f"{value!r} is not an ISO 8601 date or time") from e
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value.isoformat()} has no time zone: add one (e.g. Z)")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    raise ValueError(f"{value!r} is not a date or time")


Instant = Annotated[datetime, BeforeValidator(parse_instant)]


class ColumnSpec(_Strict):
    """One raw column of the data contract: its type, whether it may be empty, and its range."""

    type: Literal["string", "int", "float", "bool", "timestamp"]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = Field(default=None, description="the only values accepted")
    pattern: str | None = Field(default=None, description="a regular expression strings match")
    pattern_hint: str | None = Field(default=None, description="what the pattern means, in words")
    max_length: int | None = Field(
        default=None, ge=1, description=f"string columns: the most characters (default "
        f"{DEFAULT_MAX_LENGTH})")
    description: str = ""

    @property
    def length_limit(self) -> int:
        """The most characters a value of this string column may have."""
        return self.max_length or DEFAULT_MAX_LENGTH

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max apply to int and float columns, not {self.type}")
        if self.pattern is not None:
            if self.type != "string":
                raise ValueError("pattern applies to string columns")
            re.compile(self.pattern)
        if self.max_length is not None and self.type != "string":
            raise ValueError("max_length applies to string columns")
        return self


class EventLogSpec(_Strict):
    """The use case's data contract: its raw columns and which is the entity, time and label.

    From this one declaration come ingest validation, `POST /v1/events` validation, the request
    schema of the predict endpoint, the response shape and the cache key.
    """

    event_id: str = Field(default="event_id", description="unique id of an event (idempotency)")
    entity: str = Field(description="whose event; hashed at ingest unless `hashed` says otherwise")
    hashed: list[str] | None = Field(
        default=None, description="columns replaced by their keyed hash at ingest (default: entity)")
    item: str | None = Field(default=None, description="ranking: the item an event chose")
    timestamp: str = "timestamp"
    label: str | None = Field(default=None, description="what the model predicts (ranking: item)")
    label_delay: Duration = Field(default=timedelta(0),
                                  description="how long after the event its label is known")
    context: list[str] = Field(default_factory=list, description="request-time columns")
    example_context: dict[str, Any] = Field(
        default_factory=dict, description="a typical request context (server warm-up, docs)")
    columns: dict[str, ColumnSpec] = Field(description="every raw column of an event")
    earliest: Instant = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="events before this time are refused (a date is its midnight UTC)")
    max_future: Duration = Field(
        default=timedelta(minutes=5),
        description="events further ahead of the receiver's clock are refused (clock skew)")

    @property
    def hashed_columns(self) -> list[str]:
        """The columns ingest replaces by their keyed hash."""
        return [self.entity] if self.hashed is None else list(self.hashed)

    @property
    def label_column(self) -> str:
        """The label's column (a ranking's label is the chosen item)."""
        label = self.label or self.item
        if label is None:
            raise ValueError("the event log declares neither a label nor an item")
        return label

    @model_validator(mode="after")
    def _names_are_columns(self) -> EventLogSpec:
        named = {"event_id": [self.event_id], "entity": [self.entity],
                 "timestamp": [self.timestamp], "context": self.context,
                 "hashed": self.hashed or [], "item": [self.item] if self.item else [],
                 "label": [self.label] if self.label else []}
        for field_name, names in named.items():
            for name in names:
                if name not in self.columns:
                    raise ValueError(f"{field_name} {name!r} is not one of the declared columns")
        if self.columns[self.timestamp].type != "timestamp":
            raise ValueError(f"timestamp column {self.timestamp!r} must have type timestamp")
        for name in (self.event_id, self.entity):
            if self.columns[name].nullable:
                raise ValueError(f"column {name!r} identifies an event: it cannot be nullable")
        unknown = set(self.example_context) - set(self.context)
        if unknown:
            raise ValueError(f"example_context names fields outside context: {sorted(unknown)}")
        return self


class LoaderSpec(_Strict):
    """Where the use case's raw events come from: a function in `<use case>/<module>.py`.

    `loader` reads a data set: `function(data_dir) -> raw events`. `generator` simulates a world:
    `function(users=, days=, seed=, drift_day=, on_user=, **options) -> raw events`.
    """

    module: str = "data"
    function: str = "raw_events"


class FeatureSpec(_Strict):
    """Where the batch feature SQL lives and which Feast feature services the model reads.

    Sources of keys and inputs: `entity`, `item`, `context:<col>`, `time:hour_of_day` /
    `time:is_weekend` / `time:day_of_week` / `time:unix_seconds`, `feature:<stage-1 feature>`.
    """

    sql_dir: str = "features"
    reference_tables: dict[str, str] = Field(
        default_factory=dict, description="name -> file the feature SQL reads as a view "
        "(`${data}` is the shared data folder)")
    incremental_tables: list[str] = Field(
        default_factory=list, description="feature SQL tables with one row per key and "
        "`snapshots` row, stamped at its snapshot_ts and counting only events strictly before "
        "it: a run recomputes only the snapshots that new events change")
    service: str | None = Field(default=None, description="per-event tasks: the feature service")
    entity_service: str | None = Field(default=None, description="ranking stage 1 (candidates)")
    ranking_service: str | None = Field(default=None, description="ranking stage 2")
    entity_join_keys: dict[str, str] = Field(default_factory=dict,
                                             description="ranking stage-1 join key -> source")
    join_keys: dict[str, str] = Field(default_factory=dict,
                                      description="join key of the scored rows -> source")
    request_fields: dict[str, str] = Field(
        default_factory=dict, description="request-source fields of on-demand views -> source")
    inputs: dict[str, str] = Field(default_factory=dict,
                                   description="model inputs derived from a source")


class CandidateSpec(_Strict):
    """Candidate generation: the union of stage-1 list features, each truncated, in order."""

    lists: dict[str, int] = Field(description="list feature -> how many of its first items")
    fallback_list: str = Field(description="the list that answers for an unknown entity")
    max_candidates: int = 20
    static_default: list[str] = Field(
        default_factory=list, description="the last fallback: items to answer when nothing else can"
    )

    @model_validator(mode="after")
    def _fallback_is_a_list(self) -> CandidateSpec:
        if self.fallback_list not in self.lists:
            raise ValueError(f"fallback_list {self.fallback_list!r} is not one of the lists")
        return self


class RealtimeTableSpec(_Strict):
    """One real-time feature table: the function that computes its row, its table and push source."""

    function: str = Field(description="name of the function in the use case's realtime module")
    table: str = Field(description="batch table `<table>.parquet` the feature view reads")
    push_source: str = Field(description="Feast push source the stream processor writes to")


class AtRequestSpec(_Strict):
    """Online, `function(entity row, request unix us)` gives these features of `view` at the
    request's own time: a windowed count falls when a payment leaves its window, with no event
    to push it. The function is the one the tests hold equal to the view's batch rows."""

    function: str = Field(description="name of the function in the use case's realtime module")
    view: str = Field(description="the batch feature view whose features it gives (those the "
                                  "function returns; the view's others stay as read)")


class RealtimeSpec(_Strict):
    """Features updated at every event, from ONE implementation in `<use case>/<module>.py`.

    The batch pipeline folds the event log through it for training; the stream processor folds
    each arriving event through it and pushes the result to the online store.
    """

    module: str = "realtime"
    window_events: int = Field(default=20, ge=1, description="last events kept per entity")
    entity_table: RealtimeTableSpec = Field(description="one row per entity: f(last events)")
    freshness_feature: str | None = Field(
        default=None, description="`view:feature` holding the entity's last event time in Unix "
        "seconds: replays and the demo read it to know when an event is online")
    item_table: RealtimeTableSpec | None = Field(
        default=None, description="one row per (entity, item): f(the item's last event time)")
    value: str | None = Field(
        default=None, description="the event column each window event carries (default: "
        "event_log.item)")
    window_seconds: int | None = Field(
        default=None, gt=0, description="events this much older than the entity's newest leave "
        "its window (beside `window_events`)")
    entity_history: bool = Field(
        default=True, description="false: the entity table's batch file keeps each entity's "
        "latest row only (a view read online only, never in training: its rows may be large)")
    at_request: AtRequestSpec | None = Field(
        default=None, description="features evaluated at the request's time from the entity "
        "table's row, online, in place of a batch view's (windowed counts that fall as time "
        "passes)")


class BlendMemberSpec(_Strict):
    """One learner of a blend: the model's `params` updated by its own, and its weight."""

    weight: float = Field(gt=0, description="its share of the blend (weights are normalised)")
    params: dict[str, Any] = Field(default_factory=dict, description="updates of model.params")
    num_boost_round: int | None = Field(default=None, ge=1, description="default: the model's")


class ModelAlgoSpec(_Strict):
    """The learner and its parameters: LightGBM, its objective in `params` (binary, regression,
    regression_l1, huber, lambdarank, ...)."""

    algorithm: Literal["lightgbm", "lightgbm_lambdarank"] = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: int = 300
    categorical: list[str] = Field(default_factory=list)
    extra_features: list[str] = Field(
        default_factory=list, description="model inputs that are not Feast features"
    )
    exclude_features: list[str] = Field(
        default_factory=list, description="features of the service that are not model inputs "
        "(inputs of on-demand views, such as absolute times); shell patterns (`*_unix`) match")
    blend: list[BlendMemberSpec] = Field(
        default_factory=list, description="several learners fitted on the same rows, their raw "
        "scores (log-odds for binary) averaged with these weights into one LightGBM model")

    @model_validator(mode="after")
    def _blend_of_several(self) -> ModelAlgoSpec:
        if len(self.blend) == 1:
            raise ValueError("blend: declare two learners or more (one is model.params)")
        return self


class SplitSpec(_Strict):
    """Time-based split: the last `holdout_days` are never seen by training.

    Training labels start `warmup_days` after the first event, so that their features have
    some history behind them (a 28-day window computed over one day of data is noise).
    """

    holdout_days: int = 14
    train_days: int = 28
    warmup_days: int = 7
    max_train_events: int = 8000
    max_holdout_events: int = 3000
    seed: int = 13


BaselineKind = Literal[
    "class_prior",          # classification: the training positive rate for everyone
    "feature",              # one model input as the score (`feature`, missing -> `fill`)
    "logistic_regression",  # classification: scikit-learn on the model inputs (or `features`)
    "linear_regression",    # regression: scikit-learn on the inputs, `one_hot` ones one-hot
    "label_median",         # regression: the training median for everyone
    "label_mean",           # regression: the training mean for everyone
    "most_recent",          # ranking: the entity's most recent distinct items
    "most_frequent",        # ranking: its most frequent items over 28 days
    "most_frequent_at_hour",  # ranking: ... at this hour of day, topped up by most_frequent
]


class BaselineSpec(_Strict):
    """A model a user would try first; evaluated beside ours on the same holdout."""

    kind: BaselineKind
    feature: str | None = None
    fill: Literal["label_median", "label_mean", "zero"] = "label_median"
    features: list[str] | None = Field(default=None, description="inputs (default: the model's)")
    one_hot: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _feature_named(self) -> BaselineSpec:
        if (self.kind == "feature") != (self.feature is not None):
            raise ValueError("`feature` is required with kind feature, and only then")
        return self


class ProtocolBaselineSpec(_Strict):
    """A published model re-run under a protocol: scikit-learn with the publication's settings."""

    kind: Literal["random_forest", "logistic_regression", "decision_tree"]
    features: list[str] = Field(description="its inputs, as the publication lists them")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor arguments")
    scale: bool = Field(default=True, description="standardise inputs on the training rows")


class ProtocolSpec(_Strict):
    """A published evaluation protocol, prequential: for each fold, `train_days` of events from
    its start, `delay_days` unseen (labels not known yet), then `test_days` to test on."""

    description: str = ""
    test_folds: list[date] = Field(min_length=1, description="each test fold's training start")
    validation_folds: list[date] = Field(
        default_factory=list, description="folds for choices (features, parameters), never test")
    train_days: int = Field(default=7, ge=1)
    delay_days: int = Field(default=7, ge=0)
    test_days: int = Field(default=7, ge=1)
    exclude_known_positives: bool = Field(
        default=True, description="drop from each test day the entities with a positive label "
        "known by then (from the fold's start: the day before minus delay_days)")
    top_k: int = Field(default=100, ge=1, description="entities per day for precision@k")
    id_column: str = Field(description="the event column that names a prediction in the CSV")
    id_header: str | None = Field(default=None, description="its CSV header (default: its name)")
    baselines: dict[str, ProtocolBaselineSpec] = Field(default_factory=dict)


class GateSpec(_Strict):
    """Promotion gate in metric-neutral terms. Against the champion, on the same holdout: each
    metric of `min_gain` must improve by at least its value, each of `max_drop` may worsen by at
    most its value (in the metric's own direction). Without a champion, the model must beat every
    baseline on `beat_baselines_on` (default: the primary metric)."""

    min_gain: dict[str, float] = Field(default_factory=dict)
    max_drop: dict[str, float] = Field(default_factory=dict)
    must_beat_baselines: bool = True
    beat_baselines_on: list[str] = Field(default_factory=list)


class DecisionCostSpec(_Strict):
    """What each answer costs when it is wrong or spent, in one currency."""

    missed_positive: float = Field(gt=0, description="`below` given to a positive (a fraud paid)")
    false_positive: float = Field(gt=0, description="`above` given to a negative (a good customer "
                                  "declined)")
    review: float = Field(gt=0, description="one `review` (it finds the truth)")


class DecisionSpec(_Strict):
    """A classifier's answer in words: `above` when the score is at least `threshold`.

    With `costs`, the threshold and review band follow from them, the score read as a calibrated
    probability p: each answer's expected cost is p * missed_positive (below), review, and
    (1 - p) * false_positive (above); the cheapest wins.
    """

    threshold: float = Field(default=0.5, ge=0, le=1)
    above: str = "positive"
    below: str = "negative"
    review_band: tuple[float, float] | None = Field(
        default=None, description="scores in [low, high) answer `review`")
    costs: DecisionCostSpec | None = Field(
        default=None, description="derive threshold and review band from these costs")
    review_budget_per_day: float | None = Field(
        default=None, gt=0, description="reviews a day the team can take: training raises the "
        "review band's low end until the holdout's reviews per day fit (recorded on the model "
        "version, tag `decision.review_from`)")

    def budget_review_from(self, scores: list[float], days: float) -> tuple[float, float] | None:
        """The review band's low end with the daily budget kept on these scores (`days` of
        them), and the reviews a day it gives; None without a band or a budget.

        The cheapest answer of a score in the band is a review; past the budget the next best is
        to approve, so the band keeps its highest scores: those strictly above the one that
        would exceed the budget (ties at the boundary approved, never a review too many).
        """
        if self.review_band is None or self.review_budget_per_day is None:
            return None
        if days <= 0:
            raise ValueError(f"budget_review_from: days must be positive, got {days}")
        low, high = self.review_band
        in_band = sorted((s for s in scores if low <= s < high), reverse=True)
        allowed = int(self.review_budget_per_day * days)
        if len(in_band) <= allowed:
            return low, len(in_band) / days
        review_from = math.nextafter(in_band[allowed], math.inf)
        return review_from, sum(1 for s in in_band if s >= review_from) / days

    def answer(self, score: float, review_from: float | None = None) -> str:
        """The answer in words: `review` inside the review band (from `review_from` when the
        model version set one for the budget), else `above` at or over the threshold."""
        band = self.review_band
        if band is not None:
            low = band[0] if review_from is None else max(band[0], review_from)
            if low <= score < band[1]:
                return "review"
        return self.above if score >= self.threshold else self.below

    @model_validator(mode="before")
    @classmethod
    def _from_costs(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.get("costs") is None:
            return raw
        if "threshold" in raw or "review_band" in raw:
            raise ValueError("give `costs` or `threshold`/`review_band`, not both")
        costs = DecisionCostSpec.model_validate(raw["costs"])
        miss, decline, review = costs.missed_positive, costs.false_positive, costs.review
        low, high = review / miss, 1 - review / decline  # review beats below / above from here
        if low < high:
            return {**raw, "threshold": high, "review_band": (low, high)}
        # a review never pays: below and above break even at decline / (decline + miss)
        return {**raw, "threshold": decline / (decline + miss)}


class ServingSpec(_Strict):
    """What the predict endpoint answers beyond the score, and its last-resort default."""

    items_key: str | None = Field(default=None, description="ranking: the response's list key")
    decision: DecisionSpec | None = None
    default: dict[str, Any] = Field(
        default_factory=dict, description="per-event tasks: the answer when nothing can score "
        "(`score`/`decision` for a classifier, `prediction` for a regression)")
    cache: bool | None = Field(
        default=None, description="L1 prediction cache; default on for ranking, off for per-event "
        "tasks (whose answer depends on the whole request)")


class MonitorSpec(_Strict):
    """What `feastflow monitor` computes over served requests, and where it raises an alert."""

    window_days: int = Field(default=7, ge=1, description="served requests of the last N days")
    psi_bins: int = Field(default=10, ge=2, description="quantile bins of the reference")
    psi_alert: float = Field(default=0.25, gt=0, description="a feature above this has drifted")
    max_drifted_features: int = Field(default=0, ge=0, description="alert above this many")
    match_reference_on: str | None = Field(
        default=None, description="re-weight the reference to the window's mix of this "
        "input (e.g. day_of_week: a window of a Sunday is compared with the reference's Sundays)")
    drift_exempt: list[str] = Field(
        default_factory=list, description="inputs reported but never alerted on (calendar "
        "inputs of a window shorter than the reference's always differ)")
    prediction_psi_alert: float = Field(default=0.25, gt=0)
    skew_sample: int = Field(default=300, ge=1, description="served requests replayed offline")
    max_skew_rate: float = Field(default=0.01, ge=0, le=1,
                                 description="share of served values unequal to the offline ones")
    label_horizon_seconds: float = Field(
        default=600, gt=0, description="the next event within this is the request's answer")
    min_online_top1: float = Field(default=0.0, ge=0, le=1, description="per variant, alert below")
    min_online_top4: float = Field(default=0.0, ge=0, le=1, description="per variant, alert below")
    # per-event use cases: answers judged once their labels are known (event_log.label_delay)
    min_online_auc: float = Field(default=0.0, ge=0, le=1, description="classifier: per variant, "
                                  "ROC AUC of the labelled answers; alert below")
    min_online_ap: float = Field(default=0.0, ge=0, le=1, description="classifier: per variant, "
                                 "average precision of the labelled answers; alert below")
    precision_k: int = Field(default=100, ge=1, description="classifier: precision of each "
                             "day's k highest-scored entities (the fraud book's card precision)")
    label_rate_ratio: tuple[float, float] = Field(
        default=(0.5, 2.0), description="classifier: the labelled answers' positive rate "
        "against the champion's holdout's: alert outside (and outside its 95 % interval)")
    max_online_mae: float | None = Field(default=None, gt=0, description="regressor: per "
                                         "variant, MAE of the labelled answers; alert above")
    volume_ratio: tuple[float, float] = Field(
        default=(0.5, 2.0), description="events per day against the 28 days before: alert outside")
    max_null_rate: float = Field(default=0.05, ge=0, le=1)
    max_feature_age_hours: float = Field(
        default=48, gt=0, description="a feature table whose newest row is older: alert")


class RetrainSpec(_Strict):
    """`feastflow retrain`: the latest window, judged on the most recent days (both models)."""

    holdout_days: int = Field(default=2, ge=1)
    train_days: int = Field(default=28, ge=7)


class GeneratorSpec(_Strict):
    """One stage-1 candidate generator of the retrieval shape, as of each entity's cut-off:
    `popularity` (ratings in the last `window_days`), `covisitation` (items rated within
    `window_hours` of the entity's recent items, by anyone, before the cut-off), `embedding` (the
    nearest items to the entity's embedding in the ANN index), `ease` (EASE^R item weights)."""

    kind: Literal["popularity", "covisitation", "embedding", "ease"]
    n: int = Field(default=100, ge=1, description="candidates it gives")
    params: dict[str, Any] = Field(default_factory=dict)


class AnnIndexSpec(_Strict):
    """The approximate nearest neighbour index over item embeddings (inner product)."""

    library: Literal["exact", "hnswlib", "usearch", "faiss"] = "hnswlib"
    params: dict[str, Any] = Field(default_factory=dict, description="build and search settings")


class EmbeddingSpec(_Strict):
    """Entity and item embeddings: implicit-feedback ALS factors (iALS), searched by an index."""

    factors: int = Field(default=64, ge=2)
    regularization: float = Field(default=0.05, ge=0)
    alpha: float = Field(default=1.0, gt=0, description="confidence of an observed item")
    iterations: int = Field(default=15, ge=1)
    seed: int = 13
    index: AnnIndexSpec = AnnIndexSpec()


class RerankSpec(_Strict):
    """Stage 3: what the ranked list goes through before it is answered."""

    drop_rated: bool = Field(default=True, description="never answer an item the entity rated")
    mmr_weight: float = Field(default=0.0, ge=0, le=1, description="maximal marginal relevance: "
                              "0 ranks by score alone, 1 by attribute novelty alone")
    mmr_depth: int = Field(default=50, ge=1, description="the top items the MMR re-orders")


class CatalogSpec(_Strict):
    """The items' reference table: id, title and a multi-valued attribute (diversity)."""

    table: str = Field(description="one of features.reference_tables")
    key: str
    title: str
    attribute: str = Field(description="a column of values joined by `separator`, e.g. genres")
    separator: str = "|"


class RecommenderBaselineSpec(_Strict):
    """A recommender run beside ours in the same protocol; `grid` is tuned on the validation
    split carved from the training period (never on the test)."""

    kind: Literal["top_popular", "item_knn", "ease", "ials"]
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)


class RetrievalSpec(_Strict):
    """The ranking shape "retrieval then rank": a temporal per-entity holdout, stage-1
    generators, a stage-2 ranker over their union, stage-3 re-ranking.

    Protocol: each entity's events sorted by (timestamp, item); the last max(1, floor(
    `test_fraction` * n)) are its test; the first test event's time is its cut-off; every
    feature is as of strictly before it. Relevant: test items with `rating` >= `relevant_min`.
    The same rule inside the training events carves the validation split (tuning, ranker).
    """

    rating: str = Field(description="the event column of explicit feedback")
    relevant_min: float
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    k: int = Field(default=10, ge=1, description="metrics at k")
    retrieval_k: int = Field(default=100, ge=1, description="recall of the first k (retrieval)")
    catalog: CatalogSpec
    generators: dict[str, GeneratorSpec] = Field(min_length=1)
    max_candidates: int = Field(default=200, ge=1)
    ranker_folds: int = Field(default=1, ge=1, description="folds the ranker learns from: the "
                              "validation split, then the same rule again inside its training "
                              "events, ... (more users' lists to learn from, none from the test)")
    embedding: EmbeddingSpec = EmbeddingSpec()
    rerank: RerankSpec = RerankSpec()
    baselines: dict[str, RecommenderBaselineSpec] = Field(default_factory=dict)
    history: list[str] = Field(
        default_factory=list, description="serving: list features (`view:feature`) of the items "
        "the entity rated, oldest first; their union is what the generators start from and "
        "stage 3 drops (a later list's items are the more recent)")
    history_overlay: str | None = Field(
        default=None, description="serving: `module:function` of the use case, (the entity's "
        "features read before stage 1, the item -> its attributes) -> those features with the "
        "events pushed since the batch rows counted in")

    @property
    def metric_names(self) -> list[str]:
        """Every metric of the shape, in report order."""
        k = self.k
        return [f"ndcg@{k}", f"recall@{k}", f"map@{k}", f"hit_rate@{k}",
                f"recall@{self.retrieval_k}", f"coverage@{k}", f"diversity@{k}"]


RANKING_METRICS = frozenset({"top1", "candidate_recall"})  # and top<k>, ndcg<k>, recall<k>
CLASSIFICATION_METRICS = frozenset({"roc_auc", "average_precision", "log_loss", "brier",
                                    "precision_at_threshold", "recall_at_threshold",
                                    "precision_at_budget", "recall_at_budget"})
REGRESSION_METRICS = frozenset({"mae", "rmse", "mape", "r2"})
_BASELINES_OF_TASK = {
    "ranking": {"most_recent", "most_frequent", "most_frequent_at_hour"},
    "binary_classification": {"class_prior", "feature", "logistic_regression"},
    "regression": {"feature", "linear_regression", "label_median", "label_mean"},
}


class ModelSpec(_Strict):
    """A use case: its data contract, task, Feast services, learner, split, metrics, baselines
    and gate."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="also its Feast project")
    description: str = ""
    task: Literal["ranking", "binary_classification", "regression"] = "ranking"
    event_log: EventLogSpec
    loader: LoaderSpec | None = None
    generator: LoaderSpec | None = None
    features: FeatureSpec
    candidates: CandidateSpec | None = None
    retrieval: RetrievalSpec | None = Field(
        default=None, description="ranking: the retrieval-then-rank shape (per-entity holdout)")
    realtime: RealtimeSpec | None = None
    model: ModelAlgoSpec
    split: SplitSpec = SplitSpec()
    primary_metric: str | None = None
    metrics: list[str] = Field(default_factory=list)
    top_k: int = 4
    threshold: float = Field(default=0.5, ge=0, le=1,
                             description="classification: precision/recall at this score")
    daily_budget: int | None = Field(
        default=None, ge=1, description="classification: precision/recall of the day's top N")
    baselines: dict[str, BaselineSpec] = Field(default_factory=dict)
    gate: GateSpec = GateSpec()
    serving: ServingSpec = ServingSpec()
    monitor: MonitorSpec = MonitorSpec()
    retrain: RetrainSpec = RetrainSpec()
    protocols: dict[str, ProtocolSpec] = Field(
        default_factory=dict, description="published protocols `evaluate --protocol` runs")
    source_dir: Path | None = None

    @model_validator(mode="after")
    def _fits_its_task(self) -> ModelSpec:
        log, features = self.event_log, self.features
        if self.task == "ranking":
            needed: tuple[tuple[str, Any], ...] = (
                ("event_log.item", log.item), ("features.ranking_service", features.ranking_service))
            if self.retrieval is None:
                needed += (("candidates", self.candidates),
                           ("features.entity_service", features.entity_service))
            missing = [n for n, v in needed if v is None]
            if missing:
                raise ValueError(f"task ranking needs {', '.join(missing)}")
            if self.retrieval is not None and \
                    self.retrieval.catalog.table not in features.reference_tables:
                raise ValueError(f"retrieval.catalog.table {self.retrieval.catalog.table!r} is not "
                                 "one of features.reference_tables")
        else:
            if self.retrieval is not None:
                raise ValueError(f"retrieval is a ranking shape; task {self.task} does not rank")
            missing = [n for n, v in (("event_log.label", log.label),
                                      ("features.service", features.service)) if v is None]
            if missing:
                raise ValueError(f"task {self.task} needs {', '.join(missing)}")
            if self.model.algorithm == "lightgbm_lambdarank":
                raise ValueError(f"algorithm lightgbm_lambdarank ranks; task {self.task} does not")
        known = self.known_metrics
        for name in [*self.metrics, self.primary, *self.gate.min_gain, *self.gate.max_drop,
                     *self.gate.beat_baselines_on]:
            if name not in known:
                raise ValueError(f"metric {name!r} does not apply to task {self.task}; "
                                 f"use one of {', '.join(sorted(known))}")
        budget = [m for m in (*self.metrics, self.primary) if m.endswith("_at_budget")]
        if budget and self.daily_budget is None:
            raise ValueError(f"metrics {budget} need `daily_budget` (how many a day are flagged)")
        for name, baseline in self.baselines.items():
            if baseline.kind not in _BASELINES_OF_TASK[self.task]:
                raise ValueError(f"baseline {name!r}: kind {baseline.kind} does not apply to "
                                 f"task {self.task}")
        return self

    @property
    def known_metrics(self) -> set[str]:
        """The metric names this task computes."""
        if self.retrieval is not None:
            return set(self.retrieval.metric_names)
        if self.task == "ranking":
            k = self.top_k
            return set(RANKING_METRICS) | {f"top{k}", f"ndcg{k}", f"recall{k}"}
        if self.task == "binary_classification":
            return set(CLASSIFICATION_METRICS)
        return set(REGRESSION_METRICS)

    @property
    def primary(self) -> str:
        """The metric the first model must win on: declared, else the task's usual one."""
        if self.primary_metric:
            return self.primary_metric
        if self.retrieval is not None:
            return f"ndcg@{self.retrieval.k}"
        return {"ranking": f"top{self.top_k}", "binary_classification": "roc_auc",
                "regression": "mae"}[self.task]

    def gate_rules(self) -> GateSpec:
        """The gate with its defaults filled in: baselines are beaten on the primary metric."""
        if self.gate.beat_baselines_on:
            return self.gate
        return self.gate.model_copy(update={"beat_baselines_on": [self.primary]})

    @property
    def per_event(self) -> bool:
        """One prediction per event (classification, regression) rather than a ranked list."""
        return self.task != "ranking"

    @property
    def ranking_candidates(self) -> CandidateSpec:
        """A ranking use case's candidate lists (the validator requires them for that task)."""
        if self.candidates is None:
            raise SpecError(f"{self.name}: task {self.task} declares no `candidates`")
        return self.candidates

    @property
    def item_column(self) -> str:
        """A ranking use case's item column (the validator requires it for that task)."""
        if self.event_log.item is None:
            raise SpecError(f"{self.name}: task {self.task} declares no `event_log.item`")
        return self.event_log.item

    @property
    def feature_services(self) -> list[str]:
        """The Feast feature services the model reads: one per event, two stages for ranking."""
        features = self.features
        names = ([features.service] if self.per_event else
                 [features.entity_service, features.ranking_service])
        return [n for n in names if n is not None]

    @property
    def registered_model_name(self) -> str:
        """Name of the model in the MLflow registry."""
        return self.name

    def retrain_spec(self) -> ModelSpec:
        """This spec with the retrain split: the latest `train_days`, then `holdout_days`."""
        split = self.split.model_copy(update={"holdout_days": self.retrain.holdout_days,
                                              "train_days": self.retrain.train_days})
        return self.model_copy(update={"split": split})

    @property
    def sql_dir(self) -> Path:
        """Folder of this use case's batch feature SQL files."""
        if self.source_dir is None:
            raise SpecError(f"use case {self.name!r} was not loaded from a folder")
        return self.source_dir / self.features.sql_dir


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric is better (errors and losses)."""
    return metric in LOWER_IS_BETTER


def use_cases(feature_repo: Path) -> list[str]:
    """Every use case of the feature repo: the folders with a model.yaml, by name."""
    return sorted(p.parent.name for p in feature_repo.glob("*/model.yaml"))


def load_spec(use_case: str, feature_repo: Path) -> ModelSpec:
    """Read and validate `feature_repo/<use_case>/model.yaml`."""
    path = feature_repo / use_case / "model.yaml"
    if not path.is_file():
        known = use_cases(feature_repo)
        raise SpecError(f"no model spec at {path}; known use cases: {', '.join(known) or 'none'}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise SpecError(f"invalid model spec {path}: expected a mapping of fields")
    if raw.get("name", use_case) != use_case:
        raise SpecError(f"invalid model spec {path}: name {raw['name']!r} is not its folder's "
                        f"name {use_case!r}")
    try:
        return ModelSpec(**raw, source_dir=path.parent)
    except ValidationError as e:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise SpecError(f"invalid model spec {path}: {fields}") from e
