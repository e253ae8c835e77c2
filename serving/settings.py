"""Settings of the prediction server: the platform settings plus what only the server needs."""

from __future__ import annotations

from functools import lru_cache

from feastflow.settings import Settings


class ServingSettings(Settings):
    """Which use case and model alias to serve, and where to listen."""

    use_case: str = "next_app"
    model_alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = 20


@lru_cache
def get_serving_settings() -> ServingSettings:
    """Serving settings from the environment, built once per process."""
    return ServingSettings()
