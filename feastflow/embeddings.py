"""The retrieval shape's embeddings and ANN index as files: written at training beside the
registered model (MLflow run artifacts under `retrieval/`), read back by whoever loads that model
version, so that a model and its index always move together."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feastflow.ann import INDEX_FILE, AnnIndex, build_index, load_index
from feastflow.spec import AnnIndexSpec

ARTIFACT_DIR = "retrieval"


@dataclass
class Embeddings:
    """Entity and item factors (rows in `users` / `items` order) and the index over the items."""

    users: np.ndarray
    items: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    index: AnnIndex
    index_spec: AnnIndexSpec

    @staticmethod
    def build(users: np.ndarray, items: np.ndarray, user_factors: np.ndarray,
              item_factors: np.ndarray, index_spec: AnnIndexSpec) -> Embeddings:
        """The embeddings with a freshly built index over the item factors."""
        return Embeddings(users, items, user_factors, item_factors,
                          build_index(item_factors, index_spec), index_spec)

    def save(self, folder: Path) -> Path:
        """Write every array and the index to `folder` (created)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("users", "items", "user_factors", "item_factors"):
            with open(folder / f"{name}.npy", "wb") as f:
                np.save(f, getattr(self, name), allow_pickle=False)
        self.index.save(folder / INDEX_FILE)
        (folder / "index.json").write_text(json.dumps(self.index_spec.model_dump()))
        return folder

    @staticmethod
    def load(folder: Path) -> Embeddings:
        """Read what `save` wrote (no pickles)."""
        arrays: dict[str, Any] = {name: np.load(folder / f"{name}.npy", allow_pickle=False)
                                  for name in ("users", "items", "user_factors", "item_factors")}
        spec = AnnIndexSpec.model_validate(json.loads((folder / "index.json").read_text()))
        index = load_index(folder / INDEX_FILE, spec.library, arrays["item_factors"], spec.params)
        return Embeddings(**arrays, index=index, index_spec=spec)

    def nearest(self, user: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items nearest a known entity's factor (items, inner products)."""
        row = np.searchsorted(self.users, user)
        if row >= len(self.users) or self.users[row] != user:
            raise KeyError(f"no embedding for entity {user!r}")
        rows, scores = self.index.search(self.user_factors[row], k)
        return self.items[rows[0]], scores[0]
