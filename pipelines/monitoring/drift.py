"""Feature and prediction drift: PSI over bins of the champion's reference, above its noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.monitoring.window import Observed, Section, served_inputs

EPSILON = 1e-4  # share given to an empty bin, so that PSI stays finite
MISSING = "missing"

@dataclass
class Drift:
    """PSI of one column, with the shares per bin behind it (for the plot)."""

    name: str
    psi: float
    bins: list[str]
    reference_share: list[float]
    current_share: list[float]
    n_reference: int
    n_current: int
    current_missing: float


def psi(reference: np.ndarray, current: np.ndarray, name: str, bins: int = 10,
        categorical: bool = False, labels: Sequence[str] | None = None,
        reference_weights: np.ndarray | None = None) -> Drift:
    """Population stability index over bins of the reference: deciles, or its categories.

    Missing values (NaN) are a bin of their own; a category unseen in the reference counts in
    an `other` bin. An empty bin gets a share of 1e-4 so that the sum stays finite. With
    `reference_weights` the reference's shares are weighted (its bins stay unweighted deciles).
    """
    reference = np.asarray(reference, dtype="float64")
    current = np.asarray(current, dtype="float64")
    if len(reference) == 0 or len(current) == 0:
        raise ValueError(f"{name}: PSI needs values on both sides "
                         f"(reference {len(reference)}, current {len(current)})")
    known = reference[~np.isnan(reference)]
    if categorical:
        categories = np.unique(known)
        bin_names = [labels[int(c)] if labels is not None and 0 <= c < len(labels) else f"{c:g}"
                     for c in categories]
        ref_index = _category_index(reference, categories)
        cur_index = _category_index(current, categories)
        bin_names += ["other", MISSING]
        width = len(categories) + 2
    else:
        edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1))[1:-1]) if len(known) \
            else np.array([])
        ref_index = _numeric_index(reference, edges)
        cur_index = _numeric_index(current, edges)
        bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
        bin_names = [f"<= {bounds[i + 1]}" if i < len(edges) else f"> {bounds[i]}"
                     for i in range(len(edges) + 1)] + [MISSING]
        width = len(edges) + 2
    ref_share = _shares(ref_index, width, reference_weights)
    cur_share = _shares(cur_index, width)
    value = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
    return Drift(name, value, bin_names, ref_share.tolist(), cur_share.tolist(), len(reference),
                 len(current), float(np.isnan(current).mean()))


def _category_index(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    index = np.searchsorted(categories, values)
    found = (index < len(categories)) & (categories[np.minimum(index, len(categories) - 1)]
                                         == values) if len(categories) else np.zeros(len(values),
                                                                                     bool)
    out = np.where(found, index, len(categories))  # other
    return np.where(np.isnan(values), len(categories) + 1, out)  # missing


def _numeric_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    index = np.searchsorted(edges, values, side="left")  # bins (e[i-1], e[i]]
    return np.where(np.isnan(values), len(edges) + 1, index)


def _shares(index: np.ndarray, width: int, weights: np.ndarray | None = None) -> np.ndarray:
    counts = np.bincount(index.astype("int64"), weights=weights, minlength=width).astype(
        "float64")
    shares = counts / max(counts.sum(), 1.0)
    shares = np.maximum(shares, EPSILON)
    return shares / shares.sum()


def calendar_weights(reference: pd.Series, current: pd.Series) -> np.ndarray:
    """Weights that give the reference the current side's mix of `reference`'s values (e.g.
    days of the week): a window of a Sunday is compared with the reference's Sundays."""
    ref_share = reference.value_counts(normalize=True)
    cur_share = current.value_counts(normalize=True)
    ratio = (cur_share / ref_share).reindex(ref_share.index).fillna(0.0)
    return reference.map(ratio).fillna(0.0).to_numpy(dtype="float64")


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, bins: int,
                  categories: dict[str, list[str]], match_on: str | None = None) -> list[Drift]:
    """PSI of every model input present on both sides, largest first (see calendar_weights)."""
    weights = None
    if match_on is not None and match_on in reference and match_on in current:
        weights = calendar_weights(reference[match_on], current[match_on])
    out = [psi(reference[name].to_numpy(), current[name].to_numpy(), name, bins,
               categorical=name in categories, labels=categories.get(name),
               reference_weights=None if name == match_on else weights)
           for name in reference.columns if name in current.columns]
    return sorted(out, key=lambda d: d.psi, reverse=True)


def noise_floor(reference: pd.DataFrame, days: pd.Series, window_days: int, bins: int,
                categories: dict[str, list[str]], match_on: str | None = None
                ) -> dict[str, float]:
    """Per input, the largest PSI of any `window_days`-day slice of the reference against the
    whole reference: what a window of that length reads with no drift at all.

    PSI is biased upward on small samples, and per-user inputs have one value per user and
    day: a day of 100 users reads 0.2 with nothing changed. A drift must rise above this.
    """
    distinct = np.sort(days.unique())
    if len(distinct) <= window_days:  # no slice shorter than the reference: no floor
        return {}
    floor: dict[str, float] = {}
    for start in range(len(distinct) - window_days + 1):
        in_slice = days.isin(distinct[start:start + window_days]).to_numpy()
        for drift in feature_drift(reference, reference[in_slice], bins, categories, match_on):
            floor[drift.name] = max(floor.get(drift.name, 0.0), drift.psi)
    return floor


def check_drift(observed: Observed) -> Section:
    """Feature drift of every model input (above what the reference reads on its own) and
    drift of the champion's best score."""
    thresholds = observed.thresholds
    reference, categories = observed.reference, observed.categories
    current = served_inputs(observed.answered, list(reference.columns))
    drifts = feature_drift(reference, current, thresholds.psi_bins, categories,
                           thresholds.match_reference_on) if len(current) else []
    window_days = observed.window_days
    floors = noise_floor(reference, observed.reference_days, window_days, thresholds.psi_bins,
                         categories, thresholds.match_reference_on
                         ) if observed.reference_days is not None else {}
    drifted = [d for d in drifts
               if d.psi > max(thresholds.psi_alert, floors.get(d.name, 0.0))
               and d.name not in thresholds.drift_exempt]
    alerts: list[str] = []
    if len(drifted) > thresholds.max_drifted_features:
        alerts.append(f"feature drift: {len(drifted)} inputs with PSI > {thresholds.psi_alert} "
                      f"and above what a {window_days}-day slice of the reference reads "
                      f"(allowed {thresholds.max_drifted_features}): "
                      + ", ".join(f"{d.name} {d.psi:.2f} (floor {floors.get(d.name, 0):.2f})"
                                  for d in drifted))
    answered = observed.answered
    champion_answers = answered[answered["model_version"].astype(str) == observed.champion.version]
    top_scores = np.array([s[0] for s in champion_answers["scores"] if len(s)], dtype="float64")
    prediction = psi(observed.reference_predictions["top_score"].to_numpy(), top_scores,
                     "top_score", thresholds.psi_bins) if len(top_scores) else None
    if prediction is not None and prediction.psi > thresholds.prediction_psi_alert:
        alerts.append(f"prediction drift: PSI of the best score {prediction.psi:.2f} > "
                      f"{thresholds.prediction_psi_alert}")
    return Section(
        {"feature_drift": {d.name: round(d.psi, 4) for d in drifts},
         "psi_noise_floor": {name: round(v, 4) for name, v in floors.items()},
         "drifted_features": [d.name for d in drifted],
         "prediction_drift": round(prediction.psi, 4) if prediction else None},
        alerts,
        # the exempt inputs (calendar) are left out of the plots
        plot_data={"drifts": [d for d in drifts if d.name not in thresholds.drift_exempt],
                   "prediction": prediction})
