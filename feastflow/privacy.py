"""Keyed hashing of user ids: raw ids never reach disk, logs or caches."""

from __future__ import annotations

import hashlib
import hmac


def hash_user_id(raw_user_id: str, secret: str) -> str:
    """HMAC-SHA256 of the raw id with the secret, as 32 hex characters."""
    digest = hmac.new(secret.encode(), raw_user_id.encode(), hashlib.sha256).hexdigest()
    return digest[:32]
