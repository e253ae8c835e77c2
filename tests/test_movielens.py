"""The movielens use case through the real pipeline on a small made-up data set shaped like
`movielens_latest_small`: ingest, feature SQL, Feast apply, the point-in-time join of the
candidates (leak checks against counts done by hand) and `feastflow evaluate --json`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import load_spec

GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi"]
START = 946684800  # 2000-01-01


def _write_data(data_dir: Path, users: int = 24, movies: int = 40, seed: int = 5) -> pd.DataFrame:
    """Users with a taste for two genres rate 20-40 movies each, in sessions over two years."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "movielens_latest_small"
    folder.mkdir(parents=True)
    movie_genres = {m: rng.choice(GENRES, size=rng.integers(1, 3), replace=False).tolist()
                    for m in range(1, movies + 1)}
    pd.DataFrame({"movieId": list(movie_genres),
                  "title": [f"Movie {m} ({1980 + m % 30})" for m in movie_genres],
                  "genres": ["|".join(g) for g in movie_genres.values()]}).to_csv(
        folder / "movies.csv", index=False)
    rows = []
    for user in range(1, users + 1):
        liked = set(rng.choice(GENRES, size=2, replace=False))
        weights = np.array([3.0 if liked & set(movie_genres[m]) else 1.0 for m in movie_genres])
        chosen = rng.choice(list(movie_genres), size=rng.integers(20, 41), replace=False,
                            p=weights / weights.sum())
        t = START + int(rng.integers(0, 200)) * 86400
        for movie in chosen:
            t += int(rng.choice([60, 600, 86400 * 3]))
            rating = 4.5 if liked & set(movie_genres[movie]) else float(rng.choice([2.0, 3.0, 4.0]))
            rows.append((user, int(movie), rating, t))
    ratings = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    ratings.to_csv(folder / "ratings.csv", index=False)
    return ratings


def _small_repo(root: Path) -> Path:
    repo = root / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    path = repo / "movielens" / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    shape = raw["retrieval"]
    shape["max_candidates"] = 20
    shape["ranker_folds"] = 2
    for generator in shape["generators"].values():
        generator["n"] = 10
    shape["generators"]["ease"]["params"] = {"lambda": 10, "min_item_ratings": 1}
    shape["embedding"].update(factors=4, iterations=3)
    shape["baselines"] = {"top_pop": {"kind": "top_popular", "grid": {"window_days": [30, 3650]}},
                          "ease": {"kind": "ease", "params": {"min_item_ratings": 1},
                                   "grid": {"lambda": [10, 100]}}}
    raw["model"]["num_boost_round"] = 10
    raw["model"]["params"]["min_data_in_leaf"] = 5
    path.write_text(yaml.safe_dump(raw))
    return repo


@pytest.fixture(scope="module")
def small_movielens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame]:
    """Ingested, features computed, Feast applied (embedded profile)."""
    from feastflow.store import apply_repo
    from pipelines.cli import app
    from pipelines.features import compute_feature_tables

    root = tmp_path_factory.mktemp("movielens")
    ratings = _write_data(root / "data")
    settings = Settings(home=root / "var", feature_repo=_small_repo(root), data_dir=root / "data",
                        user_hash_secret="movielens-test")
    spec = load_spec("movielens", settings.feature_repo)
    # `feastflow ingest -u movielens` without a file: the spec's loader over the data folder
    result = CliRunner().invoke(app, ["--home", str(settings.home), "ingest", "-u", "movielens"],
                                env=settings.as_env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"wrote {len(ratings):,} into" in result.output
    compute_feature_tables(settings, spec)
    apply_repo(settings, spec.name)
    return settings, ratings


def test_candidate_features_count_only_ratings_strictly_before_the_cutoff(
        small_movielens: tuple[Settings, pd.DataFrame]) -> None:
    from pipelines.generators import covisitation_pairs
    from pipelines.retrieval import fold_candidates, load_catalogue, load_events, protocol_folds

    settings, ratings = small_movielens
    spec = load_spec("movielens", settings.feature_repo)
    events = load_events(settings, spec)
    catalogue = load_catalogue(settings, spec)
    _, test = protocol_folds(events, spec.retrieval, catalogue.index)  # type: ignore[arg-type]
    found = fold_candidates(settings, spec, test, events, covisitation_pairs(
        events, catalogue.index, 24), progress=lambda _: None)
    rows = found.rows
    cutoff = pd.Series(test.stage.cutoffs[rows["request_id"]] // 1_000_000, index=rows.index)
    seconds = ratings["timestamp"].to_numpy()
    for i in rows.sample(60, random_state=1).index:
        user, movie, before = rows.at[i, "userId"], rows.at[i, "movieId"], cutoff[i]
        by_movie = ratings[(ratings["movieId"] == movie) & (seconds < before)]
        by_user = ratings[(ratings["userId"] == user) & (seconds < before)]
        assert (rows.at[i, "movie_ratings"] if pd.notna(rows.at[i, "movie_ratings"]) else 0) \
            == len(by_movie)
        assert rows.at[i, "user_ratings"] == len(by_user)
        # never a candidate the user rated before the cut-off (nor at it: its training events)
        history = set(test.split.train.loc[test.split.train["user"] == user, "item"])
        assert movie not in history
    # labels are the user's held-out movies rated >= 4
    labelled = rows[rows["label"] == 1]
    assert len(labelled) > 0
    for user, movie in zip(labelled["userId"], labelled["movieId"], strict=True):
        assert movie in test.relevant[user]


def test_evaluate_prints_the_report_and_writes_the_lists(
        small_movielens: tuple[Settings, pd.DataFrame], tmp_path: Path) -> None:
    from pipelines.cli import app

    settings, _ = small_movielens
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(app, ["--home", str(settings.home), "evaluate", "-u", "movielens",
                                      "--json", "--predictions", str(out)],
                                env=settings.as_env(), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["primary_metric"] == "ndcg@10" and report["use_case"] == "movielens"
    assert set(report["baselines"]) == {"top_pop", "ease"}
    expected = {"ndcg@10", "recall@10", "map@10", "hit_rate@10", "recall@100", "coverage@10",
                "diversity@10"}
    assert set(report["model"]) == expected
    assert all(set(m) == expected for m in report["baselines"].values())
    lists = pd.read_csv(out)
    assert list(lists.columns) == ["userId", "rank", "movieId", "score"]
    assert lists["userId"].nunique() == report["n_users"]
    first = lists.groupby("userId")["rank"].agg(["min", "max", "count"])
    assert (first["min"] == 1).all() and (first["max"] == first["count"]).all()
    assert not lists.duplicated(["userId", "movieId"]).any()


def test_champion_loads_its_own_index_and_a_rollback_rolls_both_back(
        small_movielens: tuple[Settings, pd.DataFrame], tmp_path: Path) -> None:
    from feastflow.embeddings import ARTIFACT_DIR, Embeddings
    from feastflow.spec import lower_is_better
    from pipelines.training import train_use_case
    from registry import lifecycle

    settings, _ = small_movielens
    spec = load_spec("movielens", settings.feature_repo)
    shape = spec.retrieval
    assert shape is not None
    reseeded = spec.model_copy(update={"retrieval": shape.model_copy(update={
        "embedding": shape.embedding.model_copy(update={"seed": 99})})})
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    first = train_use_case(settings, spec, progress=lambda _: None)
    # the spec's gate judges the first version against every baseline on ndcg@10 (whether this
    # tiny world's model wins is not the point: the reasons show the names round-trip)
    decision = registry.promote(spec.name, spec.gate_rules(), lower_is_better, first.version)
    assert sorted(r.split(" ")[0] for r in decision.reasons) == ["ndcg@10", "ndcg@10"]
    assert {r.split(" ")[-2] for r in decision.reasons} == {"top_pop", "ease"}
    registry.set_alias(spec.name, lifecycle.CHAMPION, first.version)
    # the gate reads back `ndcg@10` (stored as MLflow accepts it) and each baseline's
    assert "ndcg@10" in registry.version_metrics(spec.name, first.version)
    assert "ease.ndcg@10" in registry.version_metrics(spec.name, first.version)

    def champion_embeddings(where: str) -> tuple[str, Embeddings]:
        version, folder = lifecycle.load_version_artifacts(
            registry, spec.name, lifecycle.CHAMPION, ARTIFACT_DIR, tmp_path / where)
        return version, Embeddings.load(folder)

    _, before = champion_embeddings("v1")
    second = train_use_case(settings, reseeded, progress=lambda _: None)
    registry.decide(spec.name, _always(), second.version,
                    {}, first.version, {}, lower_is_better)
    version, after = champion_embeddings("v2")
    assert version == second.version
    assert not np.allclose(after.item_factors, before.item_factors)  # another seed, other factors
    # the loaded index is the one built over the loaded factors: it finds what exact search finds
    user = after.users[0]
    items, _ = after.nearest(user, 5)
    exact = after.items[np.argsort(-(after.item_factors @ after.user_factors[0]))[:5]]
    assert set(items.tolist()) == set(exact.tolist())
    assert registry.rollback(spec.name) == first.version
    version, rolled = champion_embeddings("back")
    assert version == first.version
    assert np.array_equal(rolled.item_factors, before.item_factors)
    assert np.array_equal(rolled.index.search(rolled.user_factors[0], 5)[0],
                          before.index.search(before.user_factors[0], 5)[0])
    _tampered_index_is_refused(registry, tmp_path)


def _always() -> object:
    """Gate rules that pass whatever the metrics (promotion itself is not under test here)."""
    from feastflow.spec import GateSpec

    return GateSpec(must_beat_baselines=False)


def _tampered_index_is_refused(registry: object, tmp_path: Path) -> None:
    """The registry's own copy of the champion's index is changed: loading it is refused."""
    from feastflow.embeddings import ARTIFACT_DIR
    from feastflow.errors import ModelChecksumMismatch
    from registry import lifecycle

    assert isinstance(registry, lifecycle.Registry)
    mv = registry.client.get_model_version_by_alias("movielens", lifecycle.CHAMPION)
    source = Path(registry.client.get_run(mv.run_id).info.artifact_uri.removeprefix("file://"))
    index_file = source / ARTIFACT_DIR / "ann.index"
    original = index_file.read_bytes()
    try:
        index_file.write_bytes(original[:-10])
        with pytest.raises(ModelChecksumMismatch, match=r"ann\.index"):
            lifecycle.load_version_artifacts(registry, "movielens", lifecycle.CHAMPION,
                                             ARTIFACT_DIR, tmp_path / "tampered")
    finally:
        index_file.write_bytes(original)
