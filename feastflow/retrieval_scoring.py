"""The retrieval shape's scorer on the serving hot path: stage 1 from the in-memory artifacts of
the model version and the entity's history read online, stage 2 the LightGBM ranker on the
ranking service's features read online (the same on-demand view as training), stage 3 the
declared re-ranking. Two online round trips per micro-batch: the entities' views, then the
candidates' views.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from feastflow.online import OnlineReader, Row, ViewLayout
from feastflow.plugins import use_case_module
from feastflow.ranking import model_array, time_key
from feastflow.rerank import mmr_order
from feastflow.retrieval_serving import Generated, RetrievalArtifacts, generate, interleave
from feastflow.scoring import FeaturePlan, Scored, ScoreRequest, _put, _run_odfv, _Scorer
from feastflow.spec import ModelSpec, RetrievalSpec

EMBEDDING_SIMILARITY = "embedding_similarity"  # the ranker input training names so too
# Entities whose stage 1 is kept, by history (least recently used out): ~15 KB each at 500
# ratings. A request of an entity whose history and the popularity counts did not change since
# gets the same candidates without computing them again (2.4 ms p50, ~10 ms for heavy raters).
STAGE1_MEMO_SIZE = 2048

# Stage 1 of one entity: candidate rows, each generator's list, the rated rows, the folded factor.
Retrieved = tuple[np.ndarray, dict[str, Generated], np.ndarray, np.ndarray | None]


class RetrievalRanker(_Scorer):
    """One model version: its ranker, its artifacts, and how to read its features online (the
    model, its inputs and predictor as every scorer has them: `_Scorer`)."""

    def __init__(self, spec: ModelSpec, plan: FeaturePlan, booster: Any,
                 artifacts: RetrievalArtifacts) -> None:
        if spec.retrieval is None:
            raise ValueError(f"use case {spec.name!r} declares no `retrieval:` shape")
        super().__init__(spec, plan, booster)
        self.shape: RetrievalSpec = spec.retrieval
        self.artifacts = artifacts
        self.entity_key = spec.event_log.entity
        self.item_key = spec.item_column
        self.history = [_view_feature(ref, plan.stage1, "retrieval.history") for ref in
                        self.shape.history]
        online = {name: g.params["online"] for name, g in self.shape.generators.items()
                  if g.kind == "popularity" and "online" in g.params}
        self.popularity_source = {name: _view_feature(ref, plan.stage2, f"generator {name}")
                                  for name, ref in online.items()}
        self.popularity: np.ndarray | None = None  # each item's count (refresh_popularity)
        self.popularity_version = 0  # stage 1 memo keys: a refresh makes every entry a miss
        self.stage1_memo: OrderedDict[Hashable, Retrieved] = OrderedDict()
        self.stage1_hits = 0  # requests whose stage 1 came from the memo
        self.overlay = None
        if self.shape.history_overlay:
            module, _, function = self.shape.history_overlay.partition(":")
            self.overlay = getattr(use_case_module(spec, module), function)
        self.request_fields = {name: src.partition(":")[2] for name, src in
                               spec.features.request_fields.items() if src.startswith("time:")}

    # --- the popularity generator's counts, refreshed off the request path ------------------
    async def refresh_popularity(self, reader: Any) -> None:
        """Read every catalogue item's popularity feature from the online store."""
        if not self.popularity_source:
            return
        index, position = next(iter(self.popularity_source.values()))
        view = self.plan.stage2[index]
        items = self.artifacts.items.tolist()
        rows = (await reader.read([(view, [(i,) for i in items])]))[0]
        counts = np.array([float(values[position] or 0) if values is not None else 0.0
                           for _, values in rows], dtype=np.float32)
        self.popularity = counts
        self.popularity_version += 1

    def popular(self, k: int) -> tuple[list[Any], list[float], list[str]]:
        """The k most popular items (the fallback list), scores and titles."""
        if self.popularity is None:
            return [], [], []
        order = np.argsort(-self.popularity, kind="stable")[:k]
        order = order[self.popularity[order] > 0]
        items = self.artifacts.items[order].tolist()
        return items, self.popularity[order].tolist(), [self.artifacts.titles[r] for r in order]

    # --- the request path -------------------------------------------------------------------
    async def score(self, requests: Sequence[ScoreRequest], reader: OnlineReader, k: int,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        """Top items of each request after the three stages (`timings` gets feature_fetch,
        retrieval and inference seconds)."""
        timings = {} if timings is None else timings
        started = time.perf_counter()
        users = [(r.entity,) for r in requests]
        found = await reader.read([(view, users) for view in self.plan.stage1])
        timings["feature_fetch"] = time.perf_counter() - started
        started = time.perf_counter()
        lookups = [self._retrieve(i, found) for i in range(len(requests))]
        per_request = [retrieved for retrieved, _ in lookups]
        timings["retrieval"] = time.perf_counter() - started
        candidates = sorted({int(r) for rows, *_ in per_request for r in rows})
        items = self.artifacts.items[candidates].tolist() if candidates else []
        started = time.perf_counter()
        movie_rows = await reader.read([(view, [(i,) for i in items]) for view in self.plan.stage2])
        timings["feature_fetch"] += time.perf_counter() - started
        started = time.perf_counter()
        by_item = [dict(zip(items, rows, strict=True)) for rows in movie_rows]
        results = [self._rank(request, i, found, by_item, retrieved, k)
                   for i, (request, retrieved) in enumerate(zip(requests, per_request,
                                                                strict=True))]
        for result, (_, memo) in zip(results, lookups, strict=True):
            result.stage1_memo = memo
        timings["inference"] = time.perf_counter() - started
        return results

    async def candidates(self, requests: Sequence[ScoreRequest], reader: OnlineReader
                         ) -> list[list[Any]]:
        """Stage 1 alone: each request's candidate items, the rows `score` reads and ranks."""
        users = [(r.entity,) for r in requests]
        found = await reader.read([(view, users) for view in self.plan.stage1])
        return [self.artifacts.items[self._retrieve(i, found)[0][0]].tolist()
                for i in range(len(requests))]

    def _retrieve(self, i: int, found: list[list[Row]]) -> tuple[Retrieved, bool]:
        """Stage 1 for request i: candidate rows, each generator's list, the rated rows and the
        folded-in factor; and whether they came from the memo (they do when the same history
        was retrieved since the last popularity refresh: stage 1 reads nothing else)."""
        history: list[Any] = []
        for view_index, position in self.history:
            _, values = found[view_index][i]
            if values is not None and values[position]:
                history.extend(values[position])
        key = (self.popularity_version, _history_key(history))
        memo = self.stage1_memo
        kept = memo.get(key)
        if kept is not None:
            memo.move_to_end(key)
            self.stage1_hits += 1
            return kept, True
        retrieved = self._stage1(history)
        memo[key] = retrieved
        if len(memo) > STAGE1_MEMO_SIZE:
            memo.popitem(last=False)
        return retrieved, False

    def _stage1(self, history: list[Any]) -> Retrieved:
        recent_first = list(dict.fromkeys(reversed(history)))  # a later list is more recent
        codes = self.artifacts.codes_of(recent_first)
        rated = codes[codes >= 0]
        emb = self.shape.embedding
        factor = self.artifacts.fold_in(rated, emb.regularization, emb.alpha)
        lists = generate(self.shape, self.artifacts, rated, rated, self.popularity, factor)
        union = np.array(interleave([g.rows for g in lists.values()], self.shape.max_candidates),
                         dtype=np.int64)
        # kept in the memo and shared by later requests: nothing may write to them
        for array in (union, rated, factor, *(a for g in lists.values() for a in (g.rows, g.scores))):
            if array is not None:
                array.flags.writeable = False
        return union, lists, rated, factor

    def _rank(self, request: ScoreRequest, i: int, found: list[list[Row]],
              by_item: list[dict[Any, Row]], retrieved: tuple[Any, ...], k: int) -> Scored:
        rows, lists, rated, factor = retrieved
        n = len(rows)
        if not n:
            return Scored([], [], False)
        items = self.artifacts.items[rows].tolist()
        now = request.unix_us / 1e6
        columns: dict[str, Any] = {self.entity_key: [request.entity] * n, self.item_key: items}
        for name, value in self._entity_features(i, found, now).items():
            columns[name] = [value] * n
        for view, lookup in zip(self.plan.stage2, by_item, strict=True):
            empty, ttl = (None,) * len(view.features), view.ttl_seconds
            per_row = [empty if values is None or (ttl is not None and stamp is not None
                                                   and now - stamp > ttl) else values
                       for stamp, values in map(lookup.__getitem__, items)]  # _stale, inlined
            columns.update(zip(view.features, map(list, zip(*per_row, strict=True)),
                               strict=True))
        seconds = np.array([request.unix_us // 1_000_000])
        for name, key in self.request_fields.items():
            columns[name] = [int(time_key(seconds, key)[0])] * n
        columns.update(_generator_columns(lists, rows, len(self.artifacts.items)))
        columns[EMBEDDING_SIMILARITY] = (
            (self.artifacts.embeddings.item_factors[rows] @ factor).tolist() if factor is not None
            else [np.nan] * n)
        for odfv in self.plan.odfvs:
            columns.update(_run_odfv(odfv, columns))
        matrix = model_array(columns, n, self.feature_names, self.categories)
        scores = self.predictor.predict(matrix)
        rerank = self.shape.rerank
        keep = (~np.isin(rows, rated)) if rerank.drop_rated else np.ones(n, dtype=bool)
        rows, scores, matrix = rows[keep], scores[keep], matrix[keep]
        attributes = [self.artifacts.attributes[r] for r in rows.tolist()]
        order = mmr_order(scores, attributes, rerank.mmr_weight, rerank.mmr_depth, k)[:k]
        top = rows[order]
        return Scored(self.artifacts.items[top].tolist(), scores[order].tolist(), bool(len(rated)),
                      matrix[order], self.artifacts.items[rows].tolist(),
                      titles=[self.artifacts.titles[r] for r in top.tolist()])


    def _entity_features(self, i: int, found: list[list[Row]], now: float) -> dict[str, Any]:
        """Request i's entity features by name, with the overlay's events counted in."""
        features: dict[str, Any] = {}
        for view, view_rows in zip(self.plan.stage1, found, strict=True):
            _put(features, view, view_rows[i], now)
        if self.overlay is not None:
            codes, attributes = self.artifacts.codes, self.artifacts.attributes
            features = self.overlay(features, lambda item: attributes[codes[item]]
                                    if item in codes else frozenset())
        return features


def _history_key(history: list[Any]) -> Hashable:
    """An exact, compact key of a history: 8 bytes an item when every item is an int64, else
    the tuple itself."""
    if all(type(item) is int for item in history):
        with contextlib.suppress(OverflowError):
            return np.array(history, dtype=np.int64).tobytes()
    return tuple(history)


def _generator_columns(lists: dict[str, Generated], rows: np.ndarray, n_items: int
                       ) -> dict[str, np.ndarray]:
    """`rank_in_<g>` (1-based) and `score_in_<g>` of each candidate row in each generator's
    list, NaN where the generator did not name it."""
    position = np.full(n_items, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    columns: dict[str, np.ndarray] = {}
    for name, generated in lists.items():
        at = position[generated.rows]
        named = at >= 0
        rank, score = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
        rank[at[named]] = np.arange(1, len(at) + 1)[named]
        score[at[named]] = generated.scores[named]
        columns[f"rank_in_{name}"], columns[f"score_in_{name}"] = rank, score
    return columns


def _view_feature(ref: str, views: Sequence[ViewLayout], what: str) -> tuple[int, int]:
    """(index of the view among `views`, position of the feature in it) of `view:feature`."""
    view_name, _, feature = ref.partition(":")
    for index, view in enumerate(views):
        if view.name == view_name and feature in view.features:
            return index, view.features.index(feature)
    raise ValueError(f"{what}: {ref!r} is not a feature of the views read "
                     f"({', '.join(v.name for v in views)})")
