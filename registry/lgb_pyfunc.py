"""MLflow's `python_function` loader for feastflow's LightGBM models (shipped inside each model).

MLflow's own LightGBM pyfunc hands the frame to the booster as it comes; its schema check turns
pandas categoricals into strings, which LightGBM refuses for a categorical input. This loader
reads the same native text file (never a pickle) and encodes the inputs the way training did:
categorical columns as pandas categoricals (LightGBM maps them to its trained categories), the
others as floats, missing columns as missing values. Self-contained: it is copied into the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

CATEGORICAL_FILE = "categorical.json"  # beside the model file: the categorical inputs' names


class CategoricalBooster:
    """A booster whose predict takes a frame with categorical columns as strings or categories."""

    def __init__(self, booster: lgb.Booster, categorical: list[str]) -> None:
        self.booster = booster
        self.categorical = set(categorical)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """One score per row."""
        frame = pd.DataFrame(data)
        columns = {}
        for name in self.booster.feature_name():
            values = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
            columns[name] = (values.astype("string").astype("category") if name in self.categorical
                             else pd.to_numeric(values, errors="coerce").astype("float64"))
        return np.asarray(self.booster.predict(pd.DataFrame(columns, index=frame.index)))


def _load_pyfunc(path: str) -> CategoricalBooster:
    """MLflow's entry point: `path` is the model's native LightGBM file."""
    model_file = Path(path)
    categorical = json.loads((model_file.parent / CATEGORICAL_FILE).read_text())
    return CategoricalBooster(lgb.Booster(model_file=str(model_file)), categorical)
