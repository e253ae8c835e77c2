"""ANN index benchmark for the retrieval shape: hnswlib, USearch and FAISS (HNSW, inner
product) against exact search, on the iALS item factors of the MovieLens use case.

    python bench/ann.py [--ef 50 100 200] [--k 100] [--factors 64]

Fits iALS (model.yaml's embedding settings) on the test fold's training matrix of
`movielens_latest_small`, builds each index over the item factors, and queries it with every
test user's factor one at a time on one thread: recall@k against exact search, latency p50 and
p99 (ms), build time (s). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from feastflow.ann import ExactIndex, build_index, recall_against_exact
from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import AnnIndexSpec, load_spec
from feature_repo.movielens.data import raw_events
from pipelines.interactions import as_events
from pipelines.recommenders import fit_ials
from pipelines.retrieval import load_catalogue, protocol_folds


def _latencies(index: object, queries: np.ndarray, k: int) -> list[float]:
    out = []
    for query in queries:
        started = time.perf_counter()
        index.search(query, k)  # type: ignore[attr-defined]
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    """Measure every library at every ef_search; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ef", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--factors", type=int, default=None)
    args = parser.parse_args()
    settings = Settings()
    spec = load_spec("movielens", FEATURE_REPO)
    shape = spec.retrieval
    assert shape is not None
    log = spec.event_log
    events = as_events(raw_events(settings.data_dir), log.entity, spec.item_column, shape.rating,
                       log.timestamp)
    catalogue = load_catalogue(settings, spec)
    _, test = protocol_folds(events, shape, catalogue.index)
    emb = shape.embedding
    factors = fit_ials(test.stage.history, args.factors or emb.factors, emb.regularization,
                       emb.alpha, emb.iterations, emb.seed)
    vectors, queries = factors.item_factors, factors.user_factors[test.rows]
    exact = ExactIndex(vectors)
    report: dict[str, object] = {"items": len(vectors), "dim": int(vectors.shape[1]),
                                 "queries": len(queries), "k": args.k, "threads": 1}
    lat = _latencies(exact, queries, args.k)
    results = [{"library": "exact", "recall": 1.0, "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)), "build_s": 0.0}]
    for library in ("hnswlib", "usearch", "faiss"):
        for ef in args.ef:
            started = time.perf_counter()
            index = build_index(vectors, AnnIndexSpec(library=library, params={
                "M": 16, "ef_construction": 200, "ef_search": ef}))
            build = time.perf_counter() - started
            lat = _latencies(index, queries, args.k)
            results.append({"library": library, "ef_search": ef,
                            "recall": recall_against_exact(index, vectors, queries, args.k),
                            "p50_ms": float(np.percentile(lat, 50)),
                            "p99_ms": float(np.percentile(lat, 99)), "build_s": build})
    report["results"] = results
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
