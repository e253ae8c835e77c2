"""Approximate nearest neighbour search over item embeddings by inner product, behind one small
interface: the retrieval shape's embedding generator, in training and in the server alike.

Libraries (model.yaml `retrieval.embedding.index.library`): `hnswlib`, `usearch`, `faiss`
(HNSW graphs) or `exact` (a matrix product: the reference the others are measured against).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from feastflow.spec import AnnIndexSpec


class AnnIndex(Protocol):
    """k nearest items by inner product: their row numbers and scores, best first."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (int64) and inner products (float32) of each query's k nearest items."""
        ...

    def save(self, path: Path) -> None:
        """Write the index to one file."""
        ...


class ExactIndex:
    """Brute force: every item's inner product with the query (the ground truth)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of each query's k best items."""
        scores = np.atleast_2d(queries).astype(np.float32) @ self.vectors.T
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        rows = np.take_along_axis(part, order, axis=1)
        return rows.astype(np.int64), np.take_along_axis(scores, rows, axis=1)

    def save(self, path: Path) -> None:
        """The vectors as .npy."""
        with open(path, "wb") as f:
            np.save(f, self.vectors)


class HnswlibIndex:
    """hnswlib's HNSW graph in inner-product space."""

    def __init__(self, index: Any) -> None:
        self.index = index

    @staticmethod
    def build(vectors: np.ndarray, params: dict[str, Any]) -> HnswlibIndex:
        """An HNSW graph over the vectors (M, ef_construction, ef_search)."""
        import hnswlib

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(max_elements=len(vectors), M=int(params.get("M", 16)),
                         ef_construction=int(params.get("ef_construction", 200)),
                         random_seed=int(params.get("seed", 13)))
        index.set_num_threads(1)
        index.add_items(np.ascontiguousarray(vectors, dtype=np.float32), np.arange(len(vectors)))
        index.set_ef(int(params.get("ef_search", 200)))
        return HnswlibIndex(index)

    @staticmethod
    def load(path: Path, dim: int, params: dict[str, Any]) -> HnswlibIndex:
        """An index written by `save`."""
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(str(path))
        index.set_num_threads(1)
        index.set_ef(int(params.get("ef_search", 200)))
        return HnswlibIndex(index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner products (hnswlib returns 1 - ip as distance)."""
        k = min(k, self.index.get_current_count())
        self.index.set_ef(max(self.index.ef, k))
        labels, distances = self.index.knn_query(np.atleast_2d(queries).astype(np.float32), k=k)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def save(self, path: Path) -> None:
        """hnswlib's own file."""
        self.index.save_index(str(path))


class UsearchIndex:
    """USearch's HNSW graph with the inner-product metric."""

    def __init__(self, index: Any) -> None:
        self.index = index

    @staticmethod
    def build(vectors: np.ndarray, params: dict[str, Any]) -> UsearchIndex:
        """An HNSW graph over the vectors (M as connectivity, ef_construction, ef_search)."""
        from usearch.index import Index

        index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32",
                      connectivity=int(params.get("M", 16)),
                      expansion_add=int(params.get("ef_construction", 200)),
                      expansion_search=int(params.get("ef_search", 200)))
        index.add(np.arange(len(vectors)), np.ascontiguousarray(vectors, dtype=np.float32),
                  threads=1)
        return UsearchIndex(index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner products (USearch's ip distance is 1 - ip)."""
        found = self.index.search(np.atleast_2d(queries).astype(np.float32), k, threads=1)
        return (np.atleast_2d(found.keys).astype(np.int64),
                (1.0 - np.atleast_2d(found.distances)).astype(np.float32))

    def save(self, path: Path) -> None:
        """USearch's own file."""
        self.index.save(str(path))


class FaissIndex:
    """FAISS' HNSW (IndexHNSWFlat) with the inner-product metric."""

    def __init__(self, index: Any) -> None:
        self.index = index

    @staticmethod
    def build(vectors: np.ndarray, params: dict[str, Any]) -> FaissIndex:
        """An HNSW graph over the vectors (M, ef_construction, ef_search)."""
        import faiss

        faiss.omp_set_num_threads(1)
        index = faiss.IndexHNSWFlat(vectors.shape[1], int(params.get("M", 16)),
                                    faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params.get("ef_construction", 200))
        index.hnsw.efSearch = int(params.get("ef_search", 200))
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return FaissIndex(index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and inner products."""
        scores, rows = self.index.search(np.atleast_2d(queries).astype(np.float32), k)
        return rows.astype(np.int64), scores.astype(np.float32)

    def save(self, path: Path) -> None:
        """FAISS' own file."""
        import faiss

        faiss.write_index(self.index, str(path))


def build_index(vectors: np.ndarray, spec: AnnIndexSpec) -> AnnIndex:
    """The declared index over these item vectors (row i is item i)."""
    if spec.library == "exact":
        return ExactIndex(vectors)
    builders = {"hnswlib": HnswlibIndex.build, "usearch": UsearchIndex.build,
                "faiss": FaissIndex.build}
    try:
        return builders[spec.library](vectors, spec.params)  # type: ignore[return-value]
    except ModuleNotFoundError as e:  # usearch and faiss are not installed by default
        raise ModuleNotFoundError(
            f"retrieval.embedding.index.library is {spec.library!r} but {e.name!r} is not "
            f"installed: pip install {OPTIONAL_LIBRARIES.get(spec.library, spec.library)}, or "
            "declare library: hnswlib") from e


OPTIONAL_LIBRARIES = {"usearch": "usearch", "faiss": "faiss-cpu"}  # import name -> distribution
INDEX_FILE = "ann.index"  # the index's file in an artifact folder


def load_index(path: Path, library: str, vectors: np.ndarray, params: dict[str, Any]) -> AnnIndex:
    """An index written by its `save` (the exact index is the vectors themselves)."""
    if library == "exact":
        return ExactIndex(vectors)
    if library == "hnswlib":
        return HnswlibIndex.load(path, vectors.shape[1], params)
    if library == "usearch":
        from usearch.index import Index

        return UsearchIndex(Index.restore(str(path)))
    if library == "faiss":
        import faiss

        index: Any = faiss.read_index(str(path))  # an IndexHNSWFlat, as `build` made it
        index.hnsw.efSearch = int(params.get("ef_search", 200))
        return FaissIndex(index)
    raise ValueError(f"unknown ANN library {library!r}")


def recall_against_exact(index: AnnIndex, vectors: np.ndarray, queries: np.ndarray, k: int
                         ) -> float:
    """Share of the exact top-k items the index finds, over the queries."""
    truth, _ = ExactIndex(vectors).search(queries, k)
    found, _ = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found, strict=True)]))
