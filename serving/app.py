"""The prediction server: a FastAPI app whose heavy state is built in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from feastflow.spec import load_spec
from feastflow.store import open_store
from registry import lifecycle
from serving.errors import install_handlers
from serving.predictor import Predictor
from serving.routes import health, predict
from serving.settings import ServingSettings, get_serving_settings

log = logging.getLogger(__name__)


def build_predictor(settings: ServingSettings) -> Predictor:
    """Load the spec, open the feature store and load the aliased model from the registry."""
    spec = load_spec(settings.use_case, settings.feature_repo)
    lifecycle.configure(settings.tracking_uri, settings.artifacts_uri, spec.name)
    model = lifecycle.load_by_alias(spec.registered_model_name, settings.model_alias,
                                    local_dir=None)
    predictor = Predictor(open_store(settings), spec, model)
    predictor.warm_up(datetime.now(UTC))
    return predictor


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """The app; settings default to the environment's."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings or get_serving_settings()
        try:
            app.state.predictor = build_predictor(app.state.settings)
            log.info("serving %s v%s", app.state.settings.use_case,
                     app.state.predictor.model.version)
        except lifecycle.RegistryError as e:
            app.state.predictor, app.state.load_error = None, str(e)
            log.error("no model loaded: %s", e)
        yield

    app = FastAPI(title="feastflow prediction server", version="0.1.0", lifespan=lifespan)
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(predict.router)
    return app
