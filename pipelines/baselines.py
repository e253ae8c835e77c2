"""The baselines a use case declares (`baselines:` in model.yaml), fitted on the same training
rows as the model and scored on the same holdout, in the same run.

Per-event tasks only (classification, regression); the ranking baselines (most recent, most
frequent, most frequent at this hour) read the event log and live in `pipelines.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from feastflow.ranking import LABEL
from feastflow.spec import BaselineSpec, ModelSpec


def _fill_value(kind: str, labels: pd.Series) -> float:
    if kind == "zero":
        return 0.0
    return float(labels.median() if kind == "label_median" else labels.mean())


def _design(inputs: Sequence[str], one_hot: Sequence[str]) -> ColumnTransformer:
    numeric = [c for c in inputs if c not in one_hot]
    parts = []
    if numeric:
        parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median",
                                                             keep_empty_features=True),
                                               StandardScaler()), numeric))
    if one_hot:
        parts.append(("one_hot", make_pipeline(
            SimpleImputer(strategy="constant", fill_value="missing"),
            OneHotEncoder(handle_unknown="ignore", min_frequency=5)), list(one_hot)))
    return ColumnTransformer(parts)


def _prepared(rows: pd.DataFrame, inputs: Sequence[str], one_hot: Sequence[str]) -> pd.DataFrame:
    out = {}
    for name in inputs:
        values = rows[name] if name in rows else pd.Series(np.nan, index=rows.index)
        if name in one_hot:
            out[name] = values.astype("string").fillna("missing").astype(object)
        else:
            out[name] = pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.DataFrame(out, index=rows.index)


def baseline_scores(spec: ModelSpec, baseline: BaselineSpec, train: pd.DataFrame,
                    holdout: pd.DataFrame, model_inputs: Sequence[str]) -> np.ndarray:
    """One baseline's score (classification) or prediction (regression) for each holdout row."""
    labels = train[LABEL].astype(float)
    n = len(holdout)
    if baseline.kind == "class_prior" or baseline.kind == "label_mean":
        return np.full(n, float(labels.mean()))
    if baseline.kind == "label_median":
        return np.full(n, float(labels.median()))
    if baseline.kind == "feature":
        name = baseline.feature
        if name not in holdout:
            raise KeyError(f"baseline feature {name!r} is not a column of the holdout rows")
        values = pd.to_numeric(holdout[name], errors="coerce").astype(float)
        if spec.task == "regression":
            return values.fillna(_fill_value(baseline.fill, labels)).to_numpy()
        # the feature as a probability: a one-input logistic regression keeps its order (ROC AUC
        # and average precision are the feature's own) and makes log loss and thresholds mean
        # something
        inputs: list[str] = [name]
    else:
        inputs = list(baseline.features or model_inputs)
    categorical = set(spec.model.categorical)
    one_hot = list(baseline.one_hot) or [c for c in inputs if c in categorical]
    design = _design(inputs, one_hot)
    if spec.task == "binary_classification":
        model = make_pipeline(design, LogisticRegression(max_iter=2000, C=1.0))
        model.fit(_prepared(train, inputs, one_hot), labels.astype(int))
        return model.predict_proba(_prepared(holdout, inputs, one_hot))[:, 1]
    # a near-unregularised linear regression; the tiny ridge keeps collinear one-hots stable
    model = make_pipeline(design, Ridge(alpha=1e-3))
    model.fit(_prepared(train, inputs, one_hot), labels)
    return model.predict(_prepared(holdout, inputs, one_hot))


def all_baseline_scores(spec: ModelSpec, train: pd.DataFrame, holdout: pd.DataFrame,
                        model_inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Every declared baseline's holdout scores, by name."""
    return {name: baseline_scores(spec, baseline, train, holdout, model_inputs)
            for name, baseline in spec.baselines.items()}
