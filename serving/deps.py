"""Dependencies of the routes, as Annotated aliases (swap them in tests via dependency_overrides)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.errors import ModelNotLoaded
from serving.predictor import Predictor
from serving.settings import ServingSettings


def get_predictor(request: Request) -> Predictor:
    """The predictor built at start-up."""
    predictor: Predictor | None = getattr(request.app.state, "predictor", None)
    if predictor is None:
        reason = getattr(request.app.state, "load_error", "model not loaded")
        raise ModelNotLoaded(f"no model loaded: {reason}")
    return predictor


def get_settings_dep(request: Request) -> ServingSettings:
    """The settings the app was created with."""
    return request.app.state.settings


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
SettingsDep = Annotated[ServingSettings, Depends(get_settings_dep)]
