"""Gateway API keys: salted hashes in the config, checked in constant time.

A client presents its key as `Authorization: Bearer <key>` (OpenAI clients)
or `x-api-key: <key>` (Anthropic clients). The config holds only
`sha256$<salt>$<digest>`, made by `gateway hash-key`; the key itself is never
stored, logged or echoed. Keys are long random strings, so one salted SHA-256
is enough: a slow password hash would only cost CPU on every request.

    >>> from gateway.config import GatewayKey
    >>> key = GatewayKey("web", hash_key("gk-example-secret-key", salt=bytes(16)))
    >>> key.hash[:20]
    'sha256$0000000000000'
    >>> find_key([key], "gk-example-secret-key").name, find_key([key], "gk-wrong") is None
    ('web', True)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

from .config import Auth, GatewayKey
from .errors import GatewayError

KEY_PREFIX = "gk-"


def new_key() -> str:
    """A fresh random key: 256 bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    return f"sha256${salt.hex()}${_digest(salt, key).hex()}"


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8", "surrogateescape")).digest()


def find_key(keys: Iterable[GatewayKey], presented: str) -> GatewayKey | None:
    """The configured key matching `presented`. Every key is compared, each in constant time, so the
    time taken says nothing about which key (or which prefix of one) was close."""
    found = None
    for key in keys:
        _, salt_hex, digest_hex = key.hash.split("$")
        if hmac.compare_digest(_digest(bytes.fromhex(salt_hex), presented), bytes.fromhex(digest_hex)):
            found = key
    return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent, in either convention."""
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def authenticate(auth: Auth, headers: Mapping[str, str]) -> GatewayKey | None:
    """The caller's key, or None when the gateway runs open. Raises 401 for a missing or wrong key."""
    if not auth.enabled:
        return None
    presented = presented_key(headers)
    if presented is None:
        raise GatewayError(401, "missing_api_key", "This gateway requires an API key: send Authorization: "
                                                  "Bearer <key> (or x-api-key: <key>)")
    key = find_key(auth.keys, presented)
    if key is None:
        raise GatewayError(401, "invalid_api_key", "The API key is not valid for this gateway")
    return key


def authorize_route(key: GatewayKey | None, route: str) -> None:
    if key is not None and key.routes and route not in key.routes:
        raise GatewayError(403, "model_not_allowed", f"This API key may not use the model {route!r}",
                           param="model")
