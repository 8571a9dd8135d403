"""Encrypted task results: what the setup steps cache may hold key material, so it is sealed at rest.

Prefect's built-in serializers write results in clear (and ``pickle`` restores a ``SecretStr`` in
plaintext), so results that carry certificates' keys go through ``fernet-pickle``: the pickle
serializer's output sealed with Fernet (AES-128-CBC + HMAC-SHA256 from ``cryptography``). The key is
never a field of the serializer (Prefect writes every field into each record's metadata); it is read
from the environment variable ``CLUSTERMESH_RESULT_KEY`` at the moment of use. A wrong key cannot
decrypt (Prefect treats that as a cache miss and re-runs the step); a tampered record fails the HMAC
before anything is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken
from prefect.serializers import PickleSerializer, Serializer

from clustermesh.errors import ResultKeyError

RESULT_KEY_ENV = "CLUSTERMESH_RESULT_KEY"


def result_key() -> bytes | None:
    """The Fernet key from the environment, checked; None when none is configured."""
    raw = os.environ.get(RESULT_KEY_ENV, "").strip()
    if not raw:
        return None
    try:
        Fernet(raw.encode())
    except (ValueError, TypeError):
        raise ResultKeyError(
            f"{RESULT_KEY_ENV} is set but is not a Fernet key (32 url-safe base64-encoded bytes); "
            "make one with: python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        ) from None
    return raw.encode()


def caching_enabled() -> bool:
    """Whether results holding key material may be persisted (a valid key is configured)."""
    return result_key() is not None


class FernetPickleSerializer(Serializer):  # not Serializer[Any]: a parametrised base breaks registration
    """``fernet-pickle``: pickle, then Fernet. Registered with Prefect when this module is imported."""

    type: Literal["fernet-pickle"] = "fernet-pickle"

    def dumps(self, obj: Any) -> bytes:
        key = result_key()
        if key is None:
            raise ResultKeyError(f"refusing to persist a result in clear: set {RESULT_KEY_ENV}")
        return Fernet(key).encrypt(PickleSerializer().dumps(obj))

    def loads(self, blob: bytes) -> Any:
        key = result_key()
        if key is None:
            raise ResultKeyError(f"cannot read an encrypted result: {RESULT_KEY_ENV} is not set")
        try:
            plain = Fernet(key).decrypt(blob)
        except InvalidToken:
            raise ResultKeyError(
                f"an encrypted result does not open with the current {RESULT_KEY_ENV} (rotated key?)"
            ) from None
        return PickleSerializer().loads(plain)


@contextmanager
def owner_only_files() -> Iterator[None]:
    """Files created meanwhile (result records, anything else a run writes) are the owner's alone (umask 077).

    The umask is per process, so it is put back afterwards: a process that runs a flow in-process (the CLI,
    a test, ``serve``) keeps its own setting once the flow has finished.
    """
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
