"""bench/serving.py's request pool and Feast bodies for a retrieval ranking (movielens), without
servers: the bodies are valid requests of our API and Feast's read has a row per candidate."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pandas as pd
import pytest

from feastflow.settings import DEV_HASH_SECRET, FEATURE_REPO, PROJECT_ROOT
from feastflow.spec import ModelSpec, load_spec
from serving.schemas import decode, request_type


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/serving.py as a module (named apart from the `serving` package; it imports its
    sibling `harness`)."""
    folder = str(PROJECT_ROOT / "bench")
    found = importlib.util.spec_from_file_location("bench_serving", f"{folder}/serving.py")
    assert found is not None and found.loader is not None
    module = sys.modules["bench_serving"] = importlib.util.module_from_spec(found)
    sys.path.insert(0, folder)
    try:
        found.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    """The movielens use case, as declared."""
    return load_spec("movielens", FEATURE_REPO)


def test_every_user_asks_for_top_k_after_the_last_rating(bench: ModuleType, spec: ModelSpec) -> None:
    events = pd.DataFrame({"userId": [1, 2, 3, 3], "movieId": [10, 11, 12, 13],
                           "timestamp": pd.to_datetime(["2018-09-01 00:00", "2018-09-10 00:00",
                                                        "2018-09-20 00:00", "2018-09-24 14:00"],
                                                       utc=True)})
    pool = bench.build_entity_pool(spec, events, 7, DEV_HASH_SECRET, seed=1)
    assert len(pool) == 7 and {r.user_hash for r in pool} == {1, 2, 3}
    assert all(r.known and r.when > events["timestamp"].max() + pd.Timedelta(days=6) for r in pool)
    kind = request_type(spec)
    for request in pool:
        decoded = decode(bench.compact(request.body), kind)  # what our server accepts
        assert decoded.userId == request.user_hash and decoded.k == spec.retrieval.k


def test_feast_reads_a_row_per_candidate_with_the_request_time(bench: ModuleType, spec: ModelSpec
                                                               ) -> None:
    when = pd.Timestamp("2018-10-01 08:00", tz="UTC")
    request = bench.Request({"userId": 5}, 5, True, when)
    body = bench.candidate_rows_body(spec, request, [10, 11, 12])
    assert body == {"feature_service": spec.features.ranking_service,
                    "entities": {"userId": [5, 5, 5], "movieId": [10, 11, 12],
                                 "request_unix": [int(when.timestamp())] * 3}}
