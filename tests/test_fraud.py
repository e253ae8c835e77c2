"""The fraud use case on a small world in the Fraud Detection Handbook's raw format.

- its features, through ingest, the feature SQL, Feast's point-in-time join and payment_odfv,
  equal a brute-force reading of the book's definitions (card windows counting the payment,
  terminal risk over (t-7-n, t-7] days with frauds known 7 days late), value for value, and so
  do ours that read delayed labels (the card's usual spending, the terminal's run of frauds);
- the protocol's parts: known-compromised cards leave the test days by the book's rule, card
  precision@k per day drops a card once found;
- `evaluate --protocol` runs our model and the declared book models on the same folds, and its
  predictions CSV recomputes the reported figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from feastflow.plugins import use_case_function
from feastflow.ranking import LABEL, REQUEST_ID
from feastflow.settings import Settings
from feastflow.spec import ProtocolSpec, load_spec
from feastflow.store import open_store
from pipelines.cli import app
from pipelines.datasets import build_event_set
from pipelines.protocols import DAY, FoldDays, fold_split, precision_at_k_per_day

SECRET = "fraud-secret"
START = pd.Timestamp("2018-04-01")
DAYS = 50


def book_format_world(seed: int = 3) -> pd.DataFrame:
    """200 cards paying twice a day at 30 terminals for 50 days, every payment at its own
    second; terminal 3 compromised on days 10-40 (all its payments frauds), 0.2 % of the rest
    frauds."""
    rng = np.random.default_rng(seed)
    n = 200 * 2 * DAYS
    seconds = np.sort(rng.choice(DAYS * 86_400, size=n, replace=False))
    frame = pd.DataFrame({
        "TX_DATETIME": START + pd.to_timedelta(seconds, unit="s"),
        "CUSTOMER_ID": rng.integers(0, 200, n),
        "TERMINAL_ID": rng.integers(0, 30, n),
        "TX_AMOUNT": np.round(rng.lognormal(3.5, 0.8, n), 2),
    })
    day = seconds // 86_400
    compromised = (frame["TERMINAL_ID"].to_numpy() == 3) & (day >= 10) & (day < 41)
    frame["TX_FRAUD"] = (compromised | (rng.random(n) < 0.002)).astype(int)
    frame.insert(0, "TRANSACTION_ID", np.arange(n))
    frame["TX_TIME_SECONDS"] = seconds
    frame["TX_TIME_DAYS"] = day
    frame["TX_FRAUD_SCENARIO"] = np.where(frame["TX_FRAUD"] == 1, 2, 0)
    return frame


def write_book_world(data_dir: Path) -> pd.DataFrame:
    """The small world written where the fraud loader reads the book's data under data_dir."""
    world = book_format_world()
    source = data_dir / "fraud_handbook_simulated" / "transactions.csv.gz"
    source.parent.mkdir(parents=True)
    world.assign(TX_DATETIME=world["TX_DATETIME"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(
        source, index=False)
    return world


def book_features(world: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The book's 15 inputs by brute force, straight from their definitions; a fraud counts
    from 7 days after its payment on (strictly: at exactly 7 days it is known only at the instant
    of the payment scored, which the book counts and the platform does not)."""
    t = world["TX_DATETIME"].to_numpy()
    chosen = world.iloc[rows]
    out = pd.DataFrame({"TRANSACTION_ID": chosen["TRANSACTION_ID"].to_numpy()})
    out["tx_amount"] = chosen["TX_AMOUNT"].to_numpy()
    out["tx_during_weekend"] = (chosen["TX_DATETIME"].dt.weekday >= 5).astype(int).to_numpy()
    out["tx_during_night"] = (chosen["TX_DATETIME"].dt.hour <= 6).astype(int).to_numpy()
    customers, terminals = world["CUSTOMER_ID"].to_numpy(), world["TERMINAL_ID"].to_numpy()
    amounts, frauds = world["TX_AMOUNT"].to_numpy(), world["TX_FRAUD"].to_numpy()
    day = np.timedelta64(1, "D")
    for n in (1, 7, 30):
        counts, means, terminal_counts, risks = [], [], [], []
        for i in rows:
            mine = (customers == customers[i]) & (t > t[i] - n * day) & (t <= t[i])
            counts.append(mine.sum())
            means.append(amounts[mine].mean())
            late = (terminals == terminals[i]) & (t > t[i] - (7 + n) * day) & (t < t[i] - 7 * day)
            terminal_counts.append(late.sum())
            risks.append(frauds[late].mean() if late.any() else 0.0)
        out[f"customer_id_nb_tx_{n}day_window"] = counts
        out[f"customer_id_avg_amount_{n}day_window"] = means
        out[f"terminal_id_nb_tx_{n}day_window"] = terminal_counts
        out[f"terminal_id_risk_{n}day_window"] = risks
    return out


def our_features(world: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """Ours beyond the book, by brute force from their definitions, with labels known 7 days
    after the payment: the card's usual spending (its payments known to be genuine, all its
    history) against this amount and against each payment of its last day and week (their mean
    squared z-score), and seconds since the start of the terminal's trailing run of known frauds
    (None without one)."""
    t = world["TX_DATETIME"].to_numpy()
    customers, terminals = world["CUSTOMER_ID"].to_numpy(), world["TERMINAL_ID"].to_numpy()
    amounts, frauds = world["TX_AMOUNT"].to_numpy(), world["TX_FRAUD"].to_numpy()
    known_by = t + np.timedelta64(7, "D")
    day = np.timedelta64(1, "D")
    usual, to_usual, zscore, run_age = [], [], [], []
    sq_zscore: dict[int, list[float | None]] = {1: [], 7: []}
    for i in rows:
        genuine = amounts[(customers == customers[i]) & (known_by < t[i]) & (frauds == 0)]
        mean = genuine.mean() if len(genuine) else None
        usual.append(mean)
        to_usual.append(amounts[i] / mean if mean else None)
        zscore.append((amounts[i] - mean) / max(genuine.std(), 1.0) if mean else None)
        for n, values in sq_zscore.items():
            recent = amounts[(customers == customers[i]) & (t > t[i] - n * day) & (t < t[i])]
            values.append(((recent - mean) ** 2).mean() / max(genuine.var(), 1.0)
                          if mean and len(recent) else None)
        known = np.flatnonzero((terminals == terminals[i]) & (known_by < t[i]))
        run = known[::-1][np.cumprod(frauds[known[::-1]]) == 1]  # trailing frauds, newest first
        run_age.append((t[i] - t[run[-1]]) / np.timedelta64(1, "s") if len(run) else None)
    return pd.DataFrame({"TRANSACTION_ID": world["TRANSACTION_ID"].to_numpy()[rows],
                         "usual_amount": usual, "amount_to_usual": to_usual,
                         "amount_zscore_usual": zscore, "seconds_since_terminal_run_start": run_age,
                         "sq_zscore_1d_usual": sq_zscore[1], "sq_zscore_7d_usual": sq_zscore[7]})


@pytest.fixture(scope="module")
def fraud_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame]:
    """The small world written where the loader reads the book's data, ingested, its feature
    tables computed and its Feast project applied."""
    from pipelines.feast_ops import apply_repo
    from pipelines.features import compute_feature_tables
    from pipelines.ingest import ingest_frame

    root = tmp_path_factory.mktemp("fraud")
    world = write_book_world(root / "data")
    settings = Settings(home=root / "var", data_dir=root / "data", user_hash_secret=SECRET)
    spec = load_spec("fraud", settings.feature_repo)
    raw = use_case_function(spec, spec.loader.module, spec.loader.function)(settings.data_dir)
    report = ingest_frame(raw, spec.event_log, settings.events_dir("fraud"), SECRET)
    assert report.rows_written == len(world) and report.rows_rejected == 0
    compute_feature_tables(settings, spec)
    apply_repo(settings, "fraud")
    return settings, world


def test_features_equal_the_books_definitions(fraud_world: tuple[Settings, pd.DataFrame]) -> None:
    settings, world = fraud_world
    spec = load_spec("fraud", settings.feature_repo)
    from pipelines.features import event_log_connection

    con = event_log_connection(settings.events_dir("fraud"))
    requests = con.execute("SELECT * FROM all_events ORDER BY transaction_id").df()
    requests["timestamp"] = pd.to_datetime(requests["timestamp"], utc=True).astype(
        "datetime64[us, UTC]")
    requests.insert(0, REQUEST_ID, range(len(requests)))
    rows = build_event_set(open_store(settings, "fraud"), requests, spec)
    rows["TRANSACTION_ID"] = requests.set_index(REQUEST_ID).loc[
        rows[REQUEST_ID], "transaction_id"].to_numpy()
    ours = rows.set_index("TRANSACTION_ID").sort_index()
    # every payment of the compromised terminal and of two cards, and 1,000 more at random
    sample = np.flatnonzero((world["TERMINAL_ID"] == 3) | world["CUSTOMER_ID"].isin([0, 1]))
    sample = np.union1d(sample, np.random.default_rng(0).choice(len(world), 1000, replace=False))
    expected = book_features(world, sample).merge(our_features(world, sample)).set_index(
        "TRANSACTION_ID").sort_index()
    ours = ours.loc[expected.index]
    assert expected["terminal_id_risk_7day_window"].max() > 0.5  # the compromise shows
    # the compromise's run is known from day 17 on, and a few payments follow random frauds
    assert expected["seconds_since_terminal_run_start"].max() > 20 * 86_400
    assert expected["seconds_since_terminal_run_start"].notna().sum() > 100
    # the week's payments against the usual: most cards have both, and they differ
    assert expected["sq_zscore_7d_usual"].notna().sum() > 500
    assert expected["sq_zscore_7d_usual"].std() > 0.1
    for column in expected.columns:
        np.testing.assert_allclose(ours[column].to_numpy(float), expected[column].to_numpy(float),
                                   rtol=1e-9, atol=1e-9, err_msg=column)
    assert ours[LABEL].to_numpy().tolist() == world.set_index("TRANSACTION_ID").loc[
        expected.index, "TX_FRAUD"].tolist()


def test_tables_through_a_later_day_hold_the_label_delayed_rows_the_whole_log_gives(
        fraud_world: tuple[Settings, pd.DataFrame], tmp_path: Path) -> None:
    """`compute_feature_tables(through=...)` on a log cut at day 20 continues the terminal
    risk (frauds known 7 days late) over the next 7 days exactly as the whole log's table
    has it: those rows read only labels known before the cut (a replay of that week serves
    them); without `through` the rows stop at the cut."""
    import pyarrow.parquet as pq

    from pipelines.features import compute_feature_tables
    from pipelines.ingest import ingest_frame

    whole, _ = fraud_world
    spec = load_spec("fraud", whole.feature_repo)
    cut = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=20)
    week_end = cut + pd.Timedelta(days=7)
    raw = use_case_function(spec, spec.loader.module, spec.loader.function)(whole.data_dir)
    settings = Settings(home=tmp_path / "var", data_dir=whole.data_dir, user_hash_secret=SECRET)
    ingest_frame(raw[raw["timestamp"] < cut], spec.event_log, settings.events_dir("fraud"),
                 SECRET)

    def terminal_rows(home: Settings, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        table = pq.read_table(home.feature_tables_dir("fraud") / "terminal_risk.parquet")
        frame = table.to_pandas().drop(columns="created_timestamp")
        frame = frame[(frame["event_timestamp"] >= start) & (frame["event_timestamp"] < end)]
        return frame.sort_values(["terminal_id", "event_timestamp"], ignore_index=True)

    compute_feature_tables(settings, spec)
    assert terminal_rows(settings, cut + pd.Timedelta(microseconds=1), week_end).empty
    compute_feature_tables(settings, spec, through=week_end.to_pydatetime())
    ahead = terminal_rows(settings, cut, week_end)
    assert len(ahead) > 100 and ahead["terminal_id_risk_7day_window"].max() > 0.5
    pd.testing.assert_frame_equal(ahead, terminal_rows(whole, cut, week_end))


def test_known_compromised_cards_leave_each_test_day_by_the_books_rule() -> None:
    protocol = ProtocolSpec(test_folds=["2018-04-01"], id_column="transaction_id")
    day = [pd.Timestamp("2018-04-01", tz="UTC") + pd.Timedelta(days=d) for d in range(21)]
    rows = pd.DataFrame({
        DAY: [day[0], day[8], day[14], day[15], day[16], day[16], day[20]],
        "card": ["a", "b", "a", "b", "b", "c", "c"],
        LABEL: [1, 1, 0, 0, 0, 0, 0],
    })
    train, test = fold_split(rows, FoldDays.of(day[0].date(), protocol), protocol, "card")
    assert train.index.tolist() == [0]
    # a: fraud in training, known from the first test day; b: fraud on day 8, known from day 16
    # (the day before minus the 7-day delay), so on day 15 it is still tested
    assert test.index.tolist() == [3, 5, 6]


def test_card_precision_counts_a_card_once_and_divides_by_k() -> None:
    d1, d2 = pd.Timestamp("2018-01-01"), pd.Timestamp("2018-01-02")
    entities = np.array(["a", "a", "b", "c", "a", "c", "d"])
    days = np.array([d1, d1, d1, d1, d2, d2, d2])
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.99, 0.7, 0.5])
    # day 1: a (max 0.9, a fraud among its payments) and b lead: 1 of 2; day 2: a is found
    # already, so c and d: 1 of 2 (d)
    assert precision_at_k_per_day(entities, days, labels, scores, k=2) == pytest.approx(0.5)
    # k larger than the cards of a day still divides by k: day 1 2/4, day 2 1/4 (c, d)
    assert precision_at_k_per_day(entities, days, labels, scores, k=4) == pytest.approx(0.375)


def test_evaluate_protocol_runs_both_model_and_book_models_and_writes_recomputable_predictions(
        fraud_world: tuple[Settings, pd.DataFrame], tmp_path: Path) -> None:
    import shutil

    import yaml

    settings, world = fraud_world
    repo = tmp_path / "feature_repo"
    shutil.copytree(settings.feature_repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    spec_path = repo / "fraud" / "model.yaml"
    raw = yaml.safe_load(spec_path.read_text())
    protocol = raw["protocols"]["handbook_ch5"]
    protocol.update(test_folds=["2018-04-13", "2018-04-20"], validation_folds=["2018-04-06"],
                    top_k=20)
    protocol["baselines"]["book_random_forest"]["params"].update(n_estimators=20)
    spec_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(app, [
        "evaluate", "-u", "fraud", "--protocol", "handbook_ch5", "--json",
        "--predictions", str(out)], env={
        "FEASTFLOW_HOME": str(settings.home), "FEASTFLOW_FEATURE_REPO": str(repo),
        "FEASTFLOW_DATA_DIR": str(settings.data_dir), "FEASTFLOW_USER_HASH_SECRET": SECRET})
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["protocol"] == "handbook_ch5" and report["primary_metric"] == "ap"
    # the shape, exactly: the model's mean and folds, each baseline's
    assert set(report) == {"use_case", "task", "protocol", "primary_metric", "model", "baselines"}
    assert set(report["model"]) == {"auc", "ap", "cp20", "folds"}
    assert set(report["baselines"]) == {"book_logistic_regression", "book_random_forest"}
    folds = report["model"]["folds"]
    assert [f["fold_train_start"] for f in folds] == ["2018-04-13", "2018-04-20"]
    assert report["model"]["ap"] == pytest.approx(np.mean([f["ap"] for f in folds]))
    # the terminal compromised on days 10-40 is found by its delayed risk: far above chance
    assert report["model"]["auc"] > 0.9  # measured: 0.977

    predictions = pd.read_csv(out)
    assert list(predictions.columns[:3]) == ["TRANSACTION_ID", "fold_train_start", "score"]
    labels = world.set_index("TRANSACTION_ID")["TX_FRAUD"]
    for fold in folds:
        mine = predictions[predictions["fold_train_start"] == fold["fold_train_start"]]
        assert len(mine) == fold["n_test"]
        truth = labels.loc[mine["TRANSACTION_ID"]].to_numpy()
        assert skm.average_precision_score(truth, mine["score"]) == pytest.approx(fold["ap"],
                                                                                  abs=1e-6)


def test_decision_costs_set_the_cheapest_answer_per_score() -> None:
    from feastflow.spec import DecisionSpec

    rule = DecisionSpec(above="deny", below="approve",
                        costs={"missed_positive": 100, "false_positive": 20, "review": 5})
    # review pays once p * 100 > 5; denying once (1 - p) * 20 < 5
    assert rule.threshold == pytest.approx(0.75)
    assert rule.review_band == pytest.approx((0.05, 0.75))
    # a review dearer than either mistake is never chosen: approve and deny break even
    no_review = DecisionSpec(costs={"missed_positive": 30, "false_positive": 10, "review": 9})
    assert no_review.review_band is None and no_review.threshold == pytest.approx(0.25)
    with pytest.raises(ValueError, match="not both"):
        DecisionSpec(threshold=0.3, costs={"missed_positive": 1, "false_positive": 1, "review": 1})
    spec = load_spec("fraud", Path(__file__).resolve().parents[1] / "feature_repo")
    assert spec.serving.decision.review_band == pytest.approx((5 / 131.17, 0.8))


def test_a_blend_is_one_model_and_the_server_scores_it_as_offline(
        fraud_world: tuple[Settings, pd.DataFrame]) -> None:
    """A spec's `blend` of two learners, fitted on the world's rows: one LightGBM model whose
    log-odds are the weighted mean of its learners', and the serving scorer, reading Feast's
    online store, gives each payment the score the offline point-in-time rows give it."""
    import asyncio

    from feastflow.online import FeastReader
    from feastflow.scoring import EventScorer, FeaturePlan, ScoreRequest
    from feastflow.spec import BlendMemberSpec
    from pipelines.datasets import model_feature_names
    from pipelines.feast_ops import data_window, materialize
    from pipelines.features import event_log_connection
    from pipelines.training import fit_model, score

    settings, _ = fraud_world
    spec = load_spec("fraud", settings.feature_repo)
    small = {**spec.model.params, "num_threads": 1, "max_bin": 255, "min_data_in_leaf": 20}
    members = [BlendMemberSpec(weight=1), BlendMemberSpec(weight=3, params={
        "num_leaves": 7, "learning_rate": 0.1, "seed": 5}, num_boost_round=40)]
    blended = spec.model_copy(update={"model": spec.model.model_copy(update={
        "params": small, "num_boost_round": 30, "blend": members})})
    store = open_store(settings, "fraud")
    con = event_log_connection(settings.events_dir("fraud"))
    events = con.execute("SELECT * FROM all_events ORDER BY transaction_id").df()
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True).astype(
        "datetime64[us, UTC]")
    train = events[events["timestamp"] < events["timestamp"].min() + pd.Timedelta(days=30)]
    train.insert(0, REQUEST_ID, range(len(train)))
    rows = build_event_set(store, train, blended)
    features = model_feature_names(store, blended)
    model = fit_model(rows, features, blended)
    alone = [fit_model(rows, features, spec.model_copy(update={"model": spec.model.model_copy(
        update={"params": {**small, **m.params}, "num_boost_round": m.num_boost_round or 30,
                "blend": []})}))
        for m in members]
    raw = rows[features].astype(float).to_numpy()
    np.testing.assert_allclose(model.predict(raw, raw_score=True), (
        alone[0].predict(raw, raw_score=True) + 3 * alone[1].predict(raw, raw_score=True)) / 4,
        rtol=1e-9, atol=1e-12)

    # served: the latest rows online, payments scored a second after the last one
    _, last = data_window(settings, "fraud")
    materialize(settings, "fraud", last - pd.Timedelta(days=3), last)
    asked = events.groupby("customer_id").tail(1).head(40).copy()
    asked["timestamp"] = pd.Timestamp(last).tz_convert("UTC") + pd.Timedelta(seconds=1)
    asked.insert(0, REQUEST_ID, range(len(asked)))
    offline = score(model, build_event_set(store, asked, blended), [])["score"].to_numpy()
    scorer = EventScorer(blended, FeaturePlan.from_store(store, blended), model)
    unix_us = int(asked["timestamp"].iloc[0].timestamp() * 1_000_000)
    requests = [ScoreRequest(r.customer_id, unix_us, {"transaction_id": r.transaction_id,
                                                      "terminal_id": r.terminal_id,
                                                      "tx_amount": r.tx_amount})
                for r in asked.itertuples()]
    served = asyncio.run(scorer.score(requests, FeastReader(store)))
    assert all(s.known for s in served)
    np.testing.assert_allclose([s.scores[0] for s in served], offline, rtol=1e-9, atol=1e-12)
    assert offline.std() > 0  # the payments are told apart, not all scored alike
