"""File uploads for the Slack test server (tests/slack_server.py), the way slack-sdk's ``files_upload_v2``
makes them: ``files.getUploadURLExternal`` (``filename`` and an integer ``length`` required, 0 is
``missing_argument``, alt text over 1,000 characters ``alt_txt_too_large``), a POST of the bytes to the
upload URL it answered (no token: the URL is the credential; stricter than Slack, bytes that differ from
the announced ``length`` are answered HTTP 400), then ``files.completeUploadExternal`` (``files`` a JSON
array of ``{"id", "title"}``, each uploaded and not shared yet, else ``file_not_found``; ``channel_id`` an
ID; ``thread_ts`` an existing top-level message of that channel). A shared file is a message in its
channel or thread carrying ``files``, and its bytes are served from ``url_private`` to the bot token.
"""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any

__all__ = ["FILES_PATH", "UPLOAD_PATH", "SlackFiles"]

UPLOAD_PATH = "/upload/v1/"
FILES_PATH = "/files-pri/T000-"
MAX_ALT_TEXT = 1000


class SlackFiles:
    """The file methods of :class:`tests.slack_server.SlackTestServer` (a mixin: it owns the state)."""

    _lock: Any
    _messages: list[dict[str, Any]]
    _uploads: dict[str, dict[str, Any]]
    _upload_keys: dict[str, str]
    port: int
    messages: list[dict[str, Any]]

    def _next_ts(self) -> str:
        raise NotImplementedError

    def _channel_id(self, channel: Any, *, id_only: bool = False) -> str | None:
        raise NotImplementedError

    def _auth_error(self, headers: dict[str, str], body: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def replies(self, parent_ts: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def files_in(self, parent_ts: str) -> list[dict[str, Any]]:
        """The files shared in a thread (as ``files.completeUploadExternal`` answered them), oldest first."""
        return [f for m in self.replies(parent_ts) for f in m.get("files") or []]

    def _upload_url(self, body: dict[str, Any]) -> dict[str, Any]:
        """Like Slack: ``filename`` and an integer ``length`` are required (0 is ``missing_argument``)."""
        filename, length, alt = body.get("filename"), body.get("length"), body.get("alt_txt")
        if not isinstance(filename, str) or not filename.strip():
            return _invalid_arguments("missing required field: filename")
        try:
            size = int(str(length))
        except ValueError:
            return _invalid_arguments("missing required field: length")
        if size <= 0:
            return {"ok": False, "error": "missing_argument"}
        if isinstance(alt, str) and len(alt) > MAX_ALT_TEXT:
            return {"ok": False, "error": "alt_txt_too_large"}
        with self._lock:
            file_id = f"F{self._next_ts().replace('.', '')[-10:]}"
            key = secrets.token_urlsafe(12)
            self._upload_keys[key] = file_id
            self._uploads[file_id] = {"filename": filename, "length": size, "alt_txt": alt, "data": None}
        return {"ok": True, "upload_url": f"http://127.0.0.1:{self.port}{UPLOAD_PATH}{key}", "file_id": file_id}

    def _receive_upload(self, path: str, raw: bytes) -> tuple[int, str]:
        """The upload URL: no token (the URL is the credential), the bytes announced, once."""
        with self._lock:
            file_id = self._upload_keys.pop(path[len(UPLOAD_PATH) :], None)
            upload = self._uploads.get(file_id or "")
            if upload is None:
                return 404, "upload URL unknown or used already"
            if len(raw) != upload["length"]:
                self._upload_keys[path[len(UPLOAD_PATH) :]] = str(file_id)
                return 400, f"got {len(raw)} bytes, files.getUploadURLExternal was told length={upload['length']}"
            upload["data"] = raw
        return 200, f"OK - {len(raw)}"

    def _complete_upload(self, body: dict[str, Any]) -> dict[str, Any]:
        """Share uploaded files: ``files`` a JSON array of ``{"id", "title"}``; a thread needs its channel."""
        try:
            items = json.loads(str(body.get("files") or ""))
        except json.JSONDecodeError:
            return _invalid_arguments("files must be a JSON array")
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) and i.get("id") for i in items):
            return _invalid_arguments("files must be an array of objects with an id")
        channel_arg, thread_ts = body.get("channel_id") or None, body.get("thread_ts") or None
        channel = self._channel_id(channel_arg, id_only=True) if channel_arg else None
        if channel_arg and channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if thread_ts and channel is None:
            return _invalid_arguments("thread_ts needs channel_id")
        with self._lock:
            uploads = [self._uploads.get(str(i["id"])) for i in items]
            if any(u is None or u["data"] is None or u.get("shared") for u in uploads):
                return {"ok": False, "error": "file_not_found"}
            if thread_ts and not any(
                m["ts"] == thread_ts and m["channel"] == channel and m.get("thread_ts") is None for m in self._messages
            ):
                return {"ok": False, "error": "thread_not_found"}
            files = [self._file(str(i["id"]), i.get("title")) for i in items]
            if channel is not None:
                self._messages.append(
                    {
                        "type": "message",
                        "channel": channel,
                        "ts": self._next_ts(),
                        "text": str(body.get("initial_comment") or ""),
                        "blocks": [],
                        "files": copy.deepcopy(files),
                        "thread_ts": thread_ts,
                        "via": "api",
                        "bot_id": "B000",
                        "edits": 0,
                    }
                )
        return {"ok": True, "files": files}

    def _file(self, file_id: str, title: Any) -> dict[str, Any]:
        upload = self._uploads[file_id]
        upload["shared"] = True
        name = upload["filename"]
        return {
            "id": file_id,
            "name": name,
            "title": str(title or name),
            "size": upload["length"],
            "mimetype": "image/png" if name.lower().endswith(".png") else "application/octet-stream",
            "alt_txt": upload["alt_txt"],
            "url_private": f"http://127.0.0.1:{self.port}{FILES_PATH}{file_id}/{name}",
        }

    def _download(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """``url_private``: the bytes to a request with the bot token, as Slack serves them."""
        if self._auth_error(headers, {}):
            return 403, b"invalid_auth"
        file_id = path[len(FILES_PATH) :].split("/", 1)[0]
        with self._lock:
            upload = self._uploads.get(file_id)
            data = upload.get("data") if upload and upload.get("shared") else None
        return (200, data) if isinstance(data, bytes) else (404, b"file_not_found")


def _invalid_arguments(message: str) -> dict[str, Any]:
    return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": [f"[ERROR] {message}"]}}
