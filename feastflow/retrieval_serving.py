"""Stage 1 and stage 3 of the retrieval shape for ONE entity at a time: what the server runs per
request, from the artifacts registered with the model version (`retrieval/`).

The artifacts (written by `pipelines.retrieval.serving_artifacts`, loaded by the server with the
model, so that a rollback rolls them back together):
- the iALS embeddings and the ANN index over the item factors (`feastflow.embeddings`);
- `covisitation.npz`: per item, the items rated by the same person within the generator's
  window, with how often (over the whole log);
- `ease.npz`: EASE^R item weights over the supported items;
- `catalogue.json`: each item's title and attributes (titles in answers, MMR over genres).

Popularity is read from the online store (the feature the popularity generator names as
`params.online`, e.g. `movie_popularity_fv:movie_ratings_365d`), refreshed in the background.
An entity's history comes from the online store too, so a rating posted as an event changes
the next answer: its factor is folded in from its rated items (ALS's closed form for one user
against the fixed item factors), never read from the training run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feastflow.embeddings import Embeddings
from feastflow.spec import RetrievalSpec

COVISITATION_FILE = "covisitation.npz"
EASE_FILE = "ease.npz"
CATALOGUE_FILE = "catalogue.json"
ANN_HISTORY_CAP = 500  # rated items the ANN search asks for beyond n (heavy raters: latency)


def interleave(lists: Sequence[Sequence[int] | np.ndarray], max_candidates: int) -> list[int]:
    """The union of ranked lists, taking every list's first item, then every second one, ...
    (-1 entries skipped, duplicates kept at their first place), up to `max_candidates`."""
    seen: dict[int, None] = {}
    plain = [items.tolist() if isinstance(items, np.ndarray) else [int(i) for i in items]
             for items in lists]  # Python ints: no numpy scalar per look-up
    depth = max((len(items) for items in plain), default=0)
    for rank in range(depth):
        for items in plain:
            if rank < len(items) and items[rank] >= 0:
                seen.setdefault(items[rank])
        if len(seen) >= max_candidates:
            break
    return list(seen)[:max_candidates]


@dataclass
class ItemWeights:
    """An item-to-item weight matrix over the supported columns (EASE^R): scores = history @ W."""

    columns: np.ndarray
    weights: np.ndarray
    n_items: int
    _position: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._position = np.full(self.n_items, -1, dtype=np.int64)
        self._position[self.columns] = np.arange(len(self.columns))

    def scores(self, rated: np.ndarray) -> np.ndarray:
        """Every item's score for a history (unsupported items -inf)."""
        out = np.full(self.n_items, -np.inf, dtype=np.float32)
        rows = self._position[rated]
        rows = rows[rows >= 0]
        out[self.columns] = self.weights[rows].sum(axis=0) if len(rows) else 0.0
        return out


@dataclass
class Covisitation:
    """Per item, its partners and how often the pair was rated close in time (CSR by item)."""

    starts: np.ndarray
    partners: np.ndarray
    counts: np.ndarray

    def scores(self, seeds: np.ndarray, n_items: int) -> np.ndarray:
        """How often each item was paired with the seeds (summed over the seeds)."""
        found = [np.arange(self.starts[s], self.starts[s + 1]) for s in seeds]
        at = np.concatenate(found) if found else np.empty(0, dtype=np.int64)
        return np.bincount(self.partners[at], weights=self.counts[at],
                           minlength=n_items).astype(np.float32)


@dataclass
class RetrievalArtifacts:
    """Everything stage 1 and stage 3 read in memory, for one model version."""

    embeddings: Embeddings
    covisitation: Covisitation
    ease: ItemWeights | None
    titles: list[str]
    attributes: list[frozenset[str]]
    codes: dict[Any, int] = field(init=False, repr=False)
    gram: np.ndarray = field(init=False, repr=False)  # Y^T Y of the item factors (fold-in)

    def __post_init__(self) -> None:
        self.codes = {item: i for i, item in enumerate(self.embeddings.items.tolist())}
        factors = self.embeddings.item_factors.astype(np.float64)
        self.gram = factors.T @ factors

    @property
    def items(self) -> np.ndarray:
        """The catalogue's items; row i of every array is item i."""
        return self.embeddings.items

    def save(self, folder: Path) -> Path:
        """Write every artifact to `folder` (the embeddings' files beside these)."""
        self.embeddings.save(folder)
        cov = self.covisitation
        with open(folder / COVISITATION_FILE, "wb") as f:
            np.savez(f, starts=cov.starts, partners=cov.partners, counts=cov.counts)
        if self.ease is not None:
            with open(folder / EASE_FILE, "wb") as f:
                np.savez(f, columns=self.ease.columns, weights=self.ease.weights)
        (folder / CATALOGUE_FILE).write_text(json.dumps(
            {"titles": self.titles, "attributes": [sorted(a) for a in self.attributes]}))
        return folder

    @staticmethod
    def load(folder: Path) -> RetrievalArtifacts:
        """Read what `save` wrote (no pickles)."""
        embeddings = Embeddings.load(folder)
        with np.load(folder / COVISITATION_FILE, allow_pickle=False) as cov:
            covisitation = Covisitation(cov["starts"], cov["partners"], cov["counts"])
        ease = None
        if (folder / EASE_FILE).is_file():
            with np.load(folder / EASE_FILE, allow_pickle=False) as e:
                ease = ItemWeights(e["columns"], e["weights"], len(embeddings.items))
        catalogue = json.loads((folder / CATALOGUE_FILE).read_text())
        return RetrievalArtifacts(embeddings, covisitation, ease, catalogue["titles"],
                                  [frozenset(a) for a in catalogue["attributes"]])

    def codes_of(self, items: Sequence[Any]) -> np.ndarray:
        """Rows of these items (-1 for an item outside the catalogue)."""
        codes = self.codes
        return np.array([codes.get(i, -1) for i in items], dtype=np.int64)

    def fold_in(self, rated: np.ndarray, regularization: float, alpha: float) -> np.ndarray | None:
        """The entity's factor from its rated items against the fixed item factors (implicit
        ALS with confidence 1 + alpha per rated item): None without a rated item."""
        if not len(rated):
            return None
        y = self.embeddings.item_factors[rated].astype(np.float64)
        a = self.gram + alpha * (y.T @ y) + regularization * np.eye(self.gram.shape[0])
        return np.linalg.solve(a, (1.0 + alpha) * y.sum(axis=0)).astype(np.float32)


@dataclass
class Generated:
    """One generator's items (rows) and scores for one entity, best first."""

    rows: np.ndarray
    scores: np.ndarray


def best_unrated(scores: np.ndarray, rated: np.ndarray, n: int) -> Generated:
    """The n best items by score that the entity did not rate, with a positive finite score."""
    masked = scores.astype(np.float64, copy=True)
    masked[rated] = -np.inf
    n = min(n, len(masked))
    part = np.argpartition(-masked, n - 1)[:n]
    order = np.lexsort((part, -masked[part]))
    rows = part[order]
    keep = np.isfinite(masked[rows]) & (masked[rows] > 0)
    return Generated(rows[keep], masked[rows[keep]].astype(np.float32))


def generate(shape: RetrievalSpec, artifacts: RetrievalArtifacts, rated: np.ndarray,
             recent: np.ndarray, popularity: np.ndarray | None, user_factor: np.ndarray | None
             ) -> dict[str, Generated]:
    """Every declared generator's list for one entity: `rated` all its rated item rows,
    `recent` the most recent first, `popularity` each item's online count (None: not loaded)."""
    n_items = len(artifacts.items)
    out: dict[str, Generated] = {}
    for name, generator in shape.generators.items():
        kind, n, params = generator.kind, generator.n, generator.params
        if kind == "popularity":
            found = (best_unrated(popularity, rated, n) if popularity is not None
                     else Generated(np.empty(0, np.int64), np.empty(0, np.float32)))
        elif kind == "covisitation":
            seeds = recent[:int(params.get("recent_items", 30))]
            found = best_unrated(artifacts.covisitation.scores(seeds, n_items), rated, n)
        elif kind == "ease":
            found = (best_unrated(artifacts.ease.scores(rated), rated, n)
                     if artifacts.ease is not None and len(rated)
                     else Generated(np.empty(0, np.int64), np.empty(0, np.float32)))
        elif kind == "embedding":
            found = _nearest_unrated(artifacts, user_factor, rated, n)
        else:
            raise ValueError(f"generator {name!r}: unknown kind {kind!r}")
        out[name] = found
    return out


def _nearest_unrated(artifacts: RetrievalArtifacts, factor: np.ndarray | None, rated: np.ndarray,
                     n: int) -> Generated:
    """The n nearest unrated items to the factor in the ANN index (asks for n + rated, capped)."""
    if factor is None:
        return Generated(np.empty(0, np.int64), np.empty(0, np.float32))
    rows, scores = artifacts.embeddings.index.search(
        factor, n + min(len(rated), ANN_HISTORY_CAP))
    rated_set = set(rated.tolist())
    keep = [j for j, row in enumerate(rows[0].tolist()) if row >= 0 and row not in rated_set][:n]
    return Generated(rows[0][keep], scores[0][keep])
