"""The retrieval-then-rank protocol (model.yaml `retrieval:`), as pure functions over events.

Each entity's events sorted by (timestamp, item); its last max(1, floor(fraction * n)) are held
out; the first held-out event's time is its cut-off. Relevant: held-out items rated at least
`relevant_min`. The same rule applied to the training events carves the validation split, so
that every choice (baseline parameters, the ranker) is made without ever seeing the test.
Ties in time are broken by item, so anyone can recompute the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

USER, ITEM, RATING, TS = "user", "item", "rating", "ts"  # columns of an `events` frame
_EPSILON = 1e-9  # 0.2 * 35 is 7.000000000000001 in floats; 0.2 * n must floor like exact math


def as_events(raw: pd.DataFrame, entity: str, item: str, rating: str, timestamp: str
              ) -> pd.DataFrame:
    """The log as (user, item, rating, ts) with ts in Unix microseconds, sorted as the protocol
    orders it: by user, then (timestamp, item)."""
    ts = pd.to_datetime(raw[timestamp], utc=True).astype("datetime64[us, UTC]").astype("int64")
    events = pd.DataFrame({USER: raw[entity].to_numpy(), ITEM: raw[item].to_numpy(),
                           RATING: raw[rating].to_numpy(dtype=float), TS: ts.to_numpy()})
    return events.sort_values([USER, TS, ITEM], kind="stable", ignore_index=True)


def held_out_count(n: np.ndarray, fraction: float) -> np.ndarray:
    """How many of an entity's n events are held out: max(1, floor(fraction * n))."""
    return np.maximum(1, np.floor(np.asarray(n) * fraction + _EPSILON)).astype(np.int64)


@dataclass(frozen=True)
class UserSplit:
    """One split of the protocol: what each entity had before its cut-off and what came after."""

    train: pd.DataFrame  # every entity's events before its held-out ones
    test: pd.DataFrame  # the held-out events
    cutoffs: pd.Series  # entity -> its cut-off (Unix microseconds): its first held-out event

    def relevant(self, relevant_min: float) -> dict[object, set[object]]:
        """Entity -> its held-out items rated at least `relevant_min` (entities with none left
        out: they are not evaluated)."""
        liked = self.test[self.test[RATING] >= relevant_min]
        return {user: set(items) for user, items in liked.groupby(USER)[ITEM]}


def temporal_user_split(events: pd.DataFrame, fraction: float) -> UserSplit:
    """Hold out each entity's last max(1, floor(fraction * n)) events (see the module docstring).

    An entity with a single event keeps nothing for training."""
    ordered = events.sort_values([USER, TS, ITEM], kind="stable", ignore_index=True)
    grouped = ordered.groupby(USER, sort=False)
    n = grouped[ITEM].transform("size").to_numpy()
    position = grouped.cumcount().to_numpy()
    held_out = position >= n - held_out_count(n, fraction)
    test = ordered[held_out].reset_index(drop=True)
    cutoffs = test.groupby(USER, sort=True)[TS].min()
    return UserSplit(ordered[~held_out].reset_index(drop=True), test, cutoffs)


@dataclass(frozen=True)
class ItemIndex:
    """Items <-> columns 0..n-1 of every matrix (the catalogue's order)."""

    items: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "_codes", {item: i for i, item in enumerate(self.items.tolist())})

    def __len__(self) -> int:
        return len(self.items)

    def codes(self, items: pd.Series | np.ndarray) -> np.ndarray:
        """Column of each item; -1 for an item outside the catalogue."""
        lookup: dict[object, int] = self._codes  # type: ignore[attr-defined]
        return np.array([lookup.get(i, -1) for i in np.asarray(items).tolist()], dtype=np.int64)


def user_item_matrix(events: pd.DataFrame, users: np.ndarray, index: ItemIndex) -> sp.csr_matrix:
    """A binary entities x items matrix (rows in the order of `users`) of the events."""
    row_of = {u: i for i, u in enumerate(users.tolist())}
    rows = np.array([row_of.get(u, -1) for u in events[USER].tolist()], dtype=np.int64)
    cols = index.codes(events[ITEM])
    keep = (rows >= 0) & (cols >= 0)
    data = np.ones(int(keep.sum()), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows[keep], cols[keep])), shape=(len(users), len(index)))
    matrix.data[:] = 1.0  # duplicates (none in a clean log) still count once
    return matrix
