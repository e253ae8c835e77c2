"""approve / review / deny from the spec's costs AND a daily review budget: training narrows the
review band until the holdout's reviews a day fit the budget and records where it starts on the
model version; the server answers with that version's band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serving_units import StubReader, make_event_service

from feastflow.settings import FEATURE_REPO
from feastflow.spec import DecisionSpec, load_spec
from pipelines.datasets import SplitWindow
from pipelines.training import review_budget_tags
from registry.lifecycle import REVIEW_FROM_TAG
from serving.models import ServedModel

COSTS = {"missed_positive": 100, "false_positive": 20, "review": 5}  # band [0.05, 0.75)


def test_the_budget_keeps_the_bands_highest_scores_and_no_more_than_it_allows() -> None:
    rule = DecisionSpec(above="deny", below="approve", costs=COSTS, review_budget_per_day=3)
    rng = np.random.default_rng(1)
    scores = [*rng.uniform(0.05, 0.75, 50), *rng.uniform(0, 0.05, 500), *rng.uniform(0.75, 1, 7)]
    review_from, per_day = rule.budget_review_from(scores, days=5)
    in_band = sorted((s for s in scores if 0.05 <= s < 0.75), reverse=True)
    assert per_day == 3  # 15 of the 50 in the band over 5 days
    assert in_band[14] >= review_from > in_band[15]
    answers = [rule.answer(s, review_from) for s in scores]
    assert answers.count("review") == 15 and answers.count("deny") == 7
    # without the budget every score of the band is a review
    assert [rule.answer(s) for s in scores].count("review") == 50


def test_ties_at_the_boundary_are_approved_never_a_review_over_budget() -> None:
    rule = DecisionSpec(costs=COSTS, review_budget_per_day=2)
    review_from, per_day = rule.budget_review_from([0.5] * 3 + [0.3] * 10 + [0.9], days=2)
    assert review_from > 0.3 and per_day == 1.5  # the three 0.5s: the 0.3s would be too many
    # a budget the band never fills keeps the costs' band as it is
    assert rule.budget_review_from([0.5, 0.3], days=2) == (0.05, 1.0)
    assert DecisionSpec(costs=COSTS).budget_review_from([0.5], days=1) is None
    with pytest.raises(ValueError, match="greater than 0"):
        DecisionSpec(costs=COSTS, review_budget_per_day=0)


def test_training_records_the_band_start_and_the_server_answers_with_it(tmp_path: Path) -> None:
    spec = load_spec("fraud", FEATURE_REPO)
    assert spec.serving.decision.review_budget_per_day == 100
    day = pd.Timestamp("2018-08-01", tz="UTC")
    window = SplitWindow(day - pd.Timedelta(days=35), day, day + pd.Timedelta(days=2))
    low, high = spec.serving.decision.review_band
    scores = [0.5] * 150 + [0.2] * 100 + [0.01] * 5000  # 250 in the band over 2 days: 100 fit
    tags = review_budget_tags(spec, scores, window)
    review_from = float(tags[REVIEW_FROM_TAG])
    assert 0.2 < review_from <= 0.5 and tags["decision.reviews_per_day_holdout"] == "75.00"

    service = make_event_service(tmp_path, StubReader(down=False), use_case="fraud")
    budgeted = ServedModel("champion", "4", "run-4", None, "registry", 0.0,  # type: ignore[arg-type]
                           review_from=review_from)
    assert [service.decide(s, budgeted) for s in (0.01, 0.2, 0.5, 0.9)] == [
        "approve", "approve", "review", "deny"]
    assert service.decide(0.2) == "review"  # a version trained without a budget: the costs' band
    assert low < 0.2 < high
    service.prediction_log.close()
