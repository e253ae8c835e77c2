"""feastflow core: settings, privacy, the model spec and the ranking contract shared by every room.

Exports: Settings, get_settings, hash_user_id, ModelSpec, load_spec.
"""

from feastflow.privacy import hash_user_id
from feastflow.settings import Settings, get_settings
from feastflow.spec import ModelSpec, load_spec

__all__ = ["ModelSpec", "Settings", "get_settings", "hash_user_id", "load_spec"]
