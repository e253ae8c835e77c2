"""Scoring requests from the online store: the serving hot path, batch-first and pandas-free.

The same functions as training build every row (`feastflow.ranking`: source resolution,
candidate generation, frame columns) and the on-demand views run their own Feast UDF, so the
rows scored here are the rows the model learned from. Two scorers, one per shape of task:
- `Ranker` (ranking): two online round trips a batch (stage-1 entity features and candidate
  lists, then stage-2 features of every candidate) and one model call;
- `EventScorer` (classification, regression): one row per request, one round trip, one call.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from feast import FeatureStore
from feast.on_demand_feature_view import OnDemandFeatureView

from feastflow.online import OnlineReader, Row, ViewLayout, view_layouts
from feastflow.plugins import use_case_module
from feastflow.ranking import (
    frame_columns,
    generate_candidates,
    model_array,
    model_categories,
    resolve,
    time_key,
    top_k,
)
from feastflow.spec import ModelSpec


@dataclass(frozen=True)
class ScoreRequest:
    """One request: the hashed entity, its time in Unix microseconds, and its context."""

    entity: str
    unix_us: int
    context: Mapping[str, Any]


HOUR_US = 3_600_000_000


def hourly_requests(entity: str, start_us: int, context: Mapping[str, Any], hours: int = 24
                    ) -> list[ScoreRequest]:
    """One request per hour from `start_us` in the same context (bundles, popular lists)."""
    return [ScoreRequest(entity, start_us + h * HOUR_US, context) for h in range(hours)]


def hour_of_day(unix_us: int) -> int:
    """The hour-of-day key (UTC) of a time in Unix microseconds, as training derives it."""
    return int(time_key(np.array([unix_us // 1_000_000]), "hour_of_day")[0])


@dataclass
class Scored:
    """Ranked items for one request, and the model inputs they were scored with."""

    items: list[str]
    scores: list[float]
    known: bool  # False: the entity has none of its own candidates (a new user)
    inputs: np.ndarray | None = field(default=None, repr=False)  # one row per candidate
    candidates: list[str] = field(default_factory=list, repr=False)
    titles: list[str] | None = None  # the items' titles, where the use case has a catalogue
    stage1_memo: bool | None = None  # retrieval: stage 1 came from the memo (None: no stage 1)


@dataclass(frozen=True)
class AtRequest:
    """Features of a batch view evaluated at each request's time from a real-time view's row
    (the spec's `realtime.at_request`): `function(row, unix_us)` -> {feature: value}."""

    source: ViewLayout  # the real-time entity view the stream processor pushes
    function: Callable[[Mapping[str, Any], int], Mapping[str, Any]]
    view: str  # the batch view whose features it gives

    @classmethod
    def from_store(cls, store: FeatureStore, spec: ModelSpec, layouts: Mapping[str, ViewLayout]
                   ) -> AtRequest | None:
        """The spec's at-request features, or None when it declares none."""
        realtime = spec.realtime
        if realtime is None or realtime.at_request is None:
            return None
        push_source = realtime.entity_table.push_source
        fed = [v.name for v in store.list_feature_views()
               if v.stream_source is not None and v.stream_source.name == push_source]
        if len(fed) != 1:
            raise ValueError(f"{spec.name}: realtime.at_request reads the view fed by "
                             f"{push_source!r}; the registry has {len(fed)} such views")
        if realtime.at_request.view not in layouts:
            raise ValueError(f"{spec.name}: realtime.at_request.view "
                             f"{realtime.at_request.view!r} is not a feature view")
        function = getattr(use_case_module(spec, realtime.module), realtime.at_request.function,
                           None)
        if not callable(function):
            raise AttributeError(f"{spec.name}: {realtime.module}.py has no function "
                                 f"{realtime.at_request.function!r} (realtime.at_request)")
        return cls(layouts[fed[0]], function, realtime.at_request.view)

    def apply(self, columns: dict[str, Any], unix_us: Sequence[int]) -> None:
        """Replace the view's features, row by row, by the function's at each row's time; a row
        whose real-time view is not online keeps the batch view's values as read."""
        names = self.source.features
        sources = [columns[name] for name in names]
        for i, at_us in enumerate(unix_us):
            values = [source[i] for source in sources]
            if all(v is None for v in values):
                continue
            for name, value in self.function(dict(zip(names, values, strict=True)),
                                             at_us).items():
                columns[name][i] = value


@dataclass(frozen=True)
class FeaturePlan:
    """What to read for a use case: stage-1 views (entity keys only), stage-2 views, ODFVs,
    and features evaluated at the request's time from a real-time view (`at_request`)."""

    stage1: tuple[ViewLayout, ...]
    stage2: tuple[ViewLayout, ...]
    odfvs: tuple[OnDemandFeatureView, ...]
    at_request: AtRequest | None = None

    @classmethod
    def from_store(cls, store: FeatureStore, spec: ModelSpec) -> FeaturePlan:
        """Resolve the spec's feature services against the store's registry (a per-event task
        has one service: every view is read in its single stage)."""
        layouts = view_layouts(store)
        names: list[str] = []
        odfvs: list[OnDemandFeatureView] = []
        for service_name in spec.feature_services:
            service = store.get_feature_service(service_name)
            for projection in service.feature_view_projections:
                if projection.name in layouts:
                    names.append(projection.name)
                else:
                    odfv = store.get_on_demand_feature_view(projection.name)
                    odfvs.append(odfv)
                    names += [p.name for p in odfv.source_feature_view_projections.values()]
        stage1_keys = set(spec.features.entity_join_keys) if not spec.per_event else set()
        at_request = AtRequest.from_store(store, spec, layouts)
        if at_request is not None:
            names.append(at_request.source.name)  # read with the others, in the same trip
        unique = [layouts[n] for n in dict.fromkeys(names)]
        return cls(
            stage1=tuple(v for v in unique if set(v.join_keys) <= stage1_keys),
            stage2=tuple(v for v in unique if not set(v.join_keys) <= stage1_keys),
            odfvs=tuple(dict((o.name, o) for o in odfvs).values()),
            at_request=at_request,
        )


class _Scorer:
    """What both scorers share: the model, its inputs, and scoring rows from the online store."""

    def __init__(self, spec: ModelSpec, plan: FeaturePlan, booster: Any) -> None:
        self.spec = spec
        self.plan = plan
        self.booster = booster
        self.predictor = RowPredictor(booster)
        self.feature_names: list[str] = booster.feature_name()
        self.categories = model_categories(booster, spec.model.categorical)
        log = spec.event_log
        self.request_columns = [log.entity, log.timestamp, *log.context]
        # stage-1 features that scored rows carry (sources `feature:x`, extra inputs)
        sources = {**spec.features.join_keys, **spec.features.request_fields}.values()
        self.carried = {s.partition(":")[2] for s in sources if s.startswith("feature:")}
        self.carried |= set(spec.model.extra_features)

    async def _score_rows(self, expanded: dict[str, list[Any]], reader: OnlineReader,
                          timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        log = self.spec.event_log
        rows = len(expanded[log.entity])
        arrays: dict[str, Any] = {name: _objects(values) for name, values in expanded.items()
                                  if name in self.carried or name in (log.entity, log.item)
                                  or name in log.context or name.startswith("rank_in_")}
        arrays[log.timestamp] = np.array(expanded[log.timestamp], dtype="datetime64[us]")
        frame = frame_columns(arrays, self.spec)
        columns: dict[str, Any] = {name: values for name, values in expanded.items()}
        now = expanded["__now"]
        reads = []
        for view in self.plan.stage2:
            keys = list(zip(*(frame[k].tolist() for k in view.join_keys), strict=True))
            unique = list(dict.fromkeys(keys))
            reads.append((view, unique, keys))
        started = time.perf_counter()
        results = await reader.read([(view, unique) for view, unique, _ in reads])
        timings["feature_fetch"] += time.perf_counter() - started
        for (view, unique, keys), found in zip(reads, results, strict=True):
            by_key = dict(zip(unique, found, strict=True))
            empty = (None,) * len(view.features)
            rows_found = map(by_key.__getitem__, keys)
            ttl = view.ttl_seconds
            if ttl is None:
                per_row = [empty if values is None else values for _, values in rows_found]
            else:  # _stale, inlined: this runs for every candidate row of every view
                per_row = [empty if values is None or (stamp is not None and at - stamp > ttl)
                           else values for (stamp, values), at in zip(rows_found, now, strict=True)]
            columns.update(zip(view.features, map(list, zip(*per_row, strict=True)), strict=True))
        for name, values in frame.items():
            columns[name] = values.tolist()
        if self.plan.at_request is not None:
            self.plan.at_request.apply(columns, expanded[log.timestamp])
        for odfv in self.plan.odfvs:
            columns.update(_run_odfv(odfv, columns))
        started = time.perf_counter()
        matrix = model_array(columns, rows, self.feature_names, self.categories)
        scores = self.predictor.predict(matrix)
        timings["inference"] = time.perf_counter() - started
        return scores, matrix


class EventScorer(_Scorer):
    """One model scoring batches of per-event requests (classification: the positive class's
    probability; regression: the prediction) with features from an online reader."""

    def __init__(self, spec: ModelSpec, plan: FeaturePlan, booster: Any) -> None:
        super().__init__(spec, plan, booster)
        stored = {f for view in plan.stage2 for f in view.features}
        # the model inputs read from the online store (not from the request)
        self.stored_columns = [j for j, name in enumerate(self.feature_names) if name in stored]

    async def score(self, requests: Sequence[ScoreRequest], reader: OnlineReader, k: int = 1,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        """One Scored per request: `scores` holds its one value, `known` whether any of its
        stored features was found."""
        timings = {} if timings is None else timings
        timings["feature_fetch"] = 0.0
        log = self.spec.event_log
        expanded: dict[str, list[Any]] = {
            log.entity: [r.entity for r in requests],
            log.timestamp: [r.unix_us for r in requests],
            "__now": [r.unix_us / 1e6 for r in requests],
        }
        for name in log.context:
            expanded[name] = [r.context.get(name) for r in requests]
        scores, inputs = await self._score_rows(expanded, reader, timings)
        stored = self.stored_columns
        found = (~np.isnan(inputs[:, stored]).all(axis=1) if stored
                 else np.ones(len(requests), dtype=bool))
        return [Scored([], [float(scores[i])], bool(found[i]), inputs[i:i + 1], [])
                for i in range(len(requests))]


class Ranker(_Scorer):
    """One model ranking candidates for batches of requests with features from an online reader."""

    def __init__(self, spec: ModelSpec, plan: FeaturePlan, booster: Any) -> None:
        super().__init__(spec, plan, booster)
        if spec.candidates is None:
            raise ValueError(f"use case {spec.name!r} declares no candidates: it does not rank")
        lists = spec.ranking_candidates.lists
        self.list_names, self.list_limits = list(lists), list(lists.values())
        self.own_lists = [n for n in lists if n != spec.ranking_candidates.fallback_list]

    async def stage1(self, requests: Sequence[ScoreRequest], reader: OnlineReader,
                     enforce_ttl: bool = True) -> list[dict[str, Any]]:
        """Each request's stage-1 features (candidate lists and other per-entity values).

        `enforce_ttl=False` keeps values older than their view's TTL (fallback lists, where an
        old answer beats none).
        """
        columns = self._request_columns(requests)
        keys = {k: resolve(src, columns, self.spec).tolist()
                for k, src in self.spec.features.entity_join_keys.items()}
        reads = [(view, list(zip(*(keys[k] for k in view.join_keys), strict=True)))
                 for view in self.plan.stage1]
        results = await reader.read(reads)
        out: list[dict[str, Any]] = [{} for _ in requests]
        for view, rows in zip(self.plan.stage1, results, strict=True):
            for request, row, values in zip(requests, rows, out, strict=True):
                _put(values, view, row, request.unix_us / 1e6 if enforce_ttl else None)
        return out

    async def score(self, requests: Sequence[ScoreRequest], reader: OnlineReader, k: int,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        """Rank candidates for each request; entities without own candidates get the fallback list.

        `timings`, when given, receives the seconds spent in `feature_fetch` and `inference`.
        """
        timings = {} if timings is None else timings
        started = time.perf_counter()
        stage1 = await self.stage1(requests, reader)
        timings["feature_fetch"] = time.perf_counter() - started
        results: list[Scored | None] = [None] * len(requests)
        ranked: list[int] = []
        expanded: dict[str, list[Any]] = {}
        spans: list[tuple[int, int, list[str]]] = []
        for i, (request, features) in enumerate(zip(requests, stage1, strict=True)):
            if not any(features.get(name) for name in self.own_lists):
                popular = list(features.get(self.spec.ranking_candidates.fallback_list) or [])[:k]
                results[i] = Scored(popular, [1.0 / (r + 1) for r in range(len(popular))], False)
                continue
            items, ranks = generate_candidates([features.get(n) for n in self.list_names],
                                               self.list_limits, self.spec.ranking_candidates.max_candidates)
            start = len(expanded.get(self.spec.item_column, []))
            self._expand(expanded, request, features, items, ranks)
            spans.append((start, start + len(items), items))
            ranked.append(i)
        if ranked:
            scores, inputs = await self._score_rows(expanded, reader, timings)
            for i, (start, stop, items) in zip(ranked, spans, strict=True):
                best = top_k(items, scores[start:stop], k)
                results[i] = Scored([a for a, _ in best], [s for _, s in best], True,
                                    inputs[start:stop], items)
        return results  # type: ignore[return-value]

    def _request_columns(self, requests: Sequence[ScoreRequest]) -> dict[str, np.ndarray]:
        log = self.spec.event_log
        columns: dict[str, np.ndarray] = {
            log.entity: _objects([r.entity for r in requests]),
            log.timestamp: np.array([r.unix_us for r in requests], dtype="datetime64[us]"),
        }
        for name in log.context:
            columns[name] = _objects([r.context.get(name) for r in requests])
        return columns

    def _expand(self, expanded: dict[str, list[Any]], request: ScoreRequest,
                features: dict[str, Any], items: list[str], ranks: np.ndarray) -> None:
        n = len(items)
        log = self.spec.event_log
        add = expanded.setdefault
        add(self.spec.item_column, []).extend(items)
        add(log.entity, []).extend([request.entity] * n)
        add(log.timestamp, []).extend([request.unix_us] * n)
        add("__now", []).extend([request.unix_us / 1e6] * n)
        for name in log.context:
            add(name, []).extend([request.context.get(name)] * n)
        for name, value in features.items():
            add(name, []).extend([value] * n)
        for j, name in enumerate(self.list_names):
            add(f"rank_in_{name}", []).extend(ranks[:, j].tolist())

def scorer_for(spec: ModelSpec, plan: FeaturePlan, booster: Any) -> Ranker | EventScorer:
    """The scorer of the spec's task: candidates ranked, or one value per event."""
    return EventScorer(spec, plan, booster) if spec.per_event else Ranker(spec, plan, booster)


def _put(values: dict[str, Any], view: ViewLayout, row: Row, now: float | None) -> None:
    stamp, found = row
    if found is None or (now is not None and _stale(view, stamp, now)):
        for name in view.features:
            values[name] = None
        return
    values.update(zip(view.features, found, strict=True))


def _stale(view: ViewLayout, stamp: float | None, now: float) -> bool:
    # Feast's online read does not enforce the view's TTL: a value older than it is missing,
    # as it would be in the point-in-time join. A value stamped after the request is kept: a
    # phone's clock a little behind must not hide the user's own last events.
    return view.ttl_seconds is not None and stamp is not None and now - stamp > view.ttl_seconds


def _objects(values: Sequence[Any]) -> np.ndarray:
    # An object array element by element: numpy would turn a list of lists into a 2-D array.
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _run_odfv(odfv: OnDemandFeatureView, columns: Mapping[str, Any]) -> dict[str, list[Any]]:
    transformation = odfv.feature_transformation
    if transformation is None:
        raise ValueError(f"on-demand view {odfv.name!r} has no transformation")
    inputs: dict[str, list[Any]] = {}
    for projection in odfv.source_feature_view_projections.values():
        for feature in projection.features:
            inputs[feature.name] = columns[feature.name]
    for source in odfv.source_request_sources.values():
        for request_field in source.schema:
            inputs[request_field.name] = [_native(v) for v in columns[request_field.name]]
    if odfv.mode == "python":
        return transformation.udf(inputs)
    import pandas as pd  # pandas-mode views: correct but slower; prefer mode="python"

    output = transformation.udf(pd.DataFrame(inputs))
    return {name: output[name].tolist() for name in output.columns}


def _native(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


class RowPredictor:
    """`Booster.predict(matrix, num_threads=1)` through LightGBM's C API, without garbage cycles.

    Booster.predict passes the arrays with numpy's `ctypes.data_as`, whose ctypes objects form
    reference cycles: thousands per second at serving rates, freed only by the cyclic collector,
    whose young-generation passes then stopped the server for up to 120 ms (gc.callbacks, 500
    requests/s). Raw addresses make no objects to collect; tests prove the scores identical.
    """

    def __init__(self, booster: Any) -> None:
        from lightgbm import basic

        self.booster = booster
        self._lib = basic._LIB
        self._check = basic._safe_call
        self._dtype = ctypes.c_int(basic._C_API_DTYPE_FLOAT64)
        self._normal = ctypes.c_int(basic._C_API_PREDICT_NORMAL)
        self._row_major = ctypes.c_int(1)
        self._num_iteration = ctypes.c_int(booster.best_iteration or -1)
        self._parameters = ctypes.c_char_p(b"num_threads=1")

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """One score per row of a 2-D float64 matrix."""
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        rows, columns = data.shape
        scores = np.empty(rows, dtype=np.float64)
        written = ctypes.c_int64(0)
        self._check(self._lib.LGBM_BoosterPredictForMat(
            self.booster._handle, ctypes.c_void_p(data.__array_interface__["data"][0]),
            self._dtype, ctypes.c_int32(rows), ctypes.c_int32(columns), self._row_major,
            self._normal, ctypes.c_int(0), self._num_iteration, self._parameters,
            ctypes.byref(written), ctypes.c_void_p(scores.__array_interface__["data"][0])))
        if written.value != rows:
            raise ValueError(f"LightGBM wrote {written.value} scores for {rows} rows")
        return scores
