"""Encrypted task results: what the setup steps cache may hold key material, so it is sealed at rest.

Prefect's built-in serializers write results in clear (and ``pickle`` restores a ``SecretStr`` in
plaintext), so results that carry certificates' keys go through ``fernet-pickle``: the pickle
serializer's output sealed with Fernet (AES-128-CBC + HMAC-SHA256 from ``cryptography``). The key is
never a field of the serializer (Prefect writes every field into each record's metadata); it is read
from the environment variable ``CLUSTERMESH_RESULT_KEY`` at the moment of use. A wrong key cannot
decrypt (Prefect treats that as a cache miss and re-runs the step); a tampered record fails the HMAC
before anything is unpickled.

Every result file Prefect writes for our flows, sealed or not, is the owner's alone (0600 in 0700
folders): :func:`owner_only_files`, entered by every flow (directly, or by opening its cluster
sessions with ``tasks.common.cluster_sessions``), routes the run's local result storage through
:class:`OwnerOnlyFileSystem` until the run ends. That also covers the failed run's exception, which
Prefect writes after the flow function has returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.context import FlowRunContext
from prefect.filesystems import LocalFileSystem
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


# ------------------------------------------------------------------------------ owner-only files


class OwnerOnlyFileSystem(LocalFileSystem):
    """Prefect's local result storage, writing folders 0700 and files 0600 whatever the process's umask.

    Prefect writes a flow run's own result, a failed run's exception included, after the flow function
    has returned: outside every ``with`` in it, so a umask set there does not cover that file. This
    storage does. Folders that already exist are left as they are; the files it writes are 0600 even
    when they existed before.
    """

    _block_type_name = "clustermesh owner-only local file system"
    _block_type_slug = "clustermesh-owner-only-local-file-system"

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self._write_owner_only(path, content)

    @async_dispatch(awrite_path)  # as LocalFileSystem does; its abstract base declares an async-only signature
    def write_path(self, path: str, content: bytes) -> str:  # type: ignore[override]
        return self._write_owner_only(path, content)

    def _write_owner_only(self, path: str, content: bytes) -> str:
        target = self._resolve_path(path)
        _owner_only_folders(target.parent)
        if target.exists() and not target.is_file():
            raise ValueError(f"Path {target} already exists and is not a file.")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a file written before (another umask) becomes the owner's too
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return str(target)


def _owner_only_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents as 0700 (``mkdir -p`` would give the parents the umask's mode)."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by a parallel task
            continue


def owner_only_results() -> None:
    """From now until the current flow run ends, Prefect writes its results through :class:`OwnerOnlyFileSystem`.

    Only a local result storage is replaced (a remote one has no file modes); a subflow inherits it. Outside
    a flow run this does nothing.
    """
    context = FlowRunContext.get()
    if context is None:
        return
    store = context.result_store
    storage = store.result_storage
    if type(storage) is LocalFileSystem:  # exactly: a subclass may have reasons of its own
        owner_only = OwnerOnlyFileSystem(basepath=storage.basepath)
        context.result_store = store.model_copy(update={"result_storage": owner_only})


@contextmanager
def owner_only_files() -> Iterator[None]:
    """Files created meanwhile (result records, anything else a run writes) are the owner's alone (umask 077),
    and so are the result files Prefect writes for the current flow run until it ends (:func:`owner_only_results`),
    including the failed run's own result, written after the flow function has returned.

    The umask is per process, so it is put back afterwards: a process that runs a flow in-process (the CLI,
    a test, ``serve``) keeps its own setting once the flow has finished.
    """
    owner_only_results()
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
