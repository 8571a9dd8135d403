"""A Slack-compatible HTTP server for tests: slack-sdk talks to it over real HTTP.

slack-sdk uses ``urllib``, so request mocks cannot intercept it; this server answers the few Web API
methods the pipeline calls (``chat.postMessage``, ``chat.update``, ``auth.test``, ``conversations.info``,
``conversations.list``, GET or POST, paged), file uploads the way ``files_upload_v2`` makes them
(``files.getUploadURLExternal``, a POST of the bytes to the upload URL it answered, then
``files.completeUploadExternal`` sharing them into a channel or thread; the file is then downloadable from
its ``url_private`` with the bot token) and one incoming webhook, enforces the limits Slack enforces,
and can be told to fail the way Slack fails (429 with ``Retry-After``, 500, a dropped connection, a reply
slower than the client's timeout, ``ok: false``).

It is deliberately a little stricter than Slack where Slack is lenient in ways that would hide bugs:
``thread_ts`` must name an existing top-level message (Slack would post a new top-level message), and
more than 12,000 characters of block text is ``msg_blocks_too_long`` (Slack's undocumented limit lies
somewhere around 12–13k), and an upload whose bytes differ from the ``length`` announced for it is
answered HTTP 400 (Slack would only fail the file later).
"""

from __future__ import annotations

import copy
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs

from tests.slack_files import FILES_PATH, UPLOAD_PATH, SlackFiles

__all__ = ["SlackTestServer"]

WEBHOOK_PATH = "/services/T000/B000/XXXX"
DEFAULT_CHANNELS = {"mesh-alerts": "C0123456789", "mesh-drills": "C0987654321"}

MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_TEXT = 40_000
MAX_TOTAL_BLOCK_TEXT = 12_000
KNOWN_BLOCK_TYPES = {"header", "section", "context", "divider", "rich_text", "table", "actions", "image"}

FailureKind = int | Literal["close", "hang"]


@dataclass
class _Failure:
    kind: FailureKind
    retry_after: float | None
    error: str | None
    delay: float


class _BlocksError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
        return str(obj["text"])
    return ""


def _validate_blocks(blocks: Any) -> None:
    """Raise like Slack for payloads it would refuse (HTTP 200, ``ok: false``)."""
    if not isinstance(blocks, list):
        raise _BlocksError("invalid_blocks_format", "blocks must be an array")
    if len(blocks) > MAX_BLOCKS:
        raise _BlocksError("invalid_blocks", f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    total = 0
    for i, block in enumerate(blocks):
        where = f"[json-pointer:/blocks/{i}]"
        if not isinstance(block, dict) or block.get("type") not in KNOWN_BLOCK_TYPES:
            raise _BlocksError("invalid_blocks", f"unknown block type {where}")
        if len(str(block.get("block_id", ""))) > 255:
            raise _BlocksError("invalid_blocks", f"block_id too long {where}")
        kind = block["type"]
        if kind == "header":
            text = block.get("text")
            if not isinstance(text, dict) or text.get("type") != "plain_text":
                raise _BlocksError("invalid_blocks", f"header text must be plain_text {where}")
            if not 1 <= len(_text_of(text)) <= MAX_HEADER:
                raise _BlocksError(
                    "invalid_blocks", f"must be less than {MAX_HEADER + 1} characters {where[:-1]}/text/text]"
                )
            total += len(_text_of(text))
        elif kind == "section":
            text = block.get("text")
            fields = block.get("fields")
            if text is None and not fields:
                raise _BlocksError("invalid_blocks", f"section needs text or fields {where}")
            if text is not None:
                n = len(_text_of(text))
                if not 1 <= n <= MAX_SECTION_TEXT:
                    raise _BlocksError(
                        "invalid_blocks",
                        f"must be less than {MAX_SECTION_TEXT + 1} characters {where[:-1]}/text/text]",
                    )
                total += n
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > MAX_FIELDS:
                    raise _BlocksError("invalid_blocks", f"no more than {MAX_FIELDS} fields {where}")
                for j, field in enumerate(fields):
                    n = len(_text_of(field))
                    if not 1 <= n <= MAX_FIELD_TEXT:
                        raise _BlocksError(
                            "invalid_blocks",
                            f"must be less than {MAX_FIELD_TEXT + 1} characters {where[:-1]}/fields/{j}/text]",
                        )
                    total += n
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_CONTEXT_ELEMENTS:
                raise _BlocksError("invalid_blocks", f"context needs 1 to 10 elements {where}")
            for element in elements:
                n = len(_text_of(element))
                if n > MAX_SECTION_TEXT:
                    raise _BlocksError("invalid_blocks", f"context element too long {where}")
                total += n
    if total > MAX_TOTAL_BLOCK_TEXT:
        raise _BlocksError("msg_blocks_too_long", f"{total} characters of block text")


class SlackTestServer(SlackFiles):
    """A loopback Slack: records every request and message, answers like Slack, fails on request.

    Use as a context manager (``with SlackTestServer() as slack:``); ``url`` is the base for
    ``SLACK_API_URL`` (ends in ``/api/``), ``webhook_url`` the incoming-webhook address.
    """

    def __init__(
        self,
        *,
        token: str = "xoxb-0000000000-test-not-a-real-token",
        channels: dict[str, str] | None = None,
        webhook_channel: str = "C0123456789",
    ) -> None:
        self.token = token
        self.channels = dict(DEFAULT_CHANNELS if channels is None else channels)
        self.webhook_channel = webhook_channel
        self.archived: set[str] = set()  # channel names answered with is_archived
        self.not_member: set[str] = set()  # channel names the bot is not in (is_member false)
        self.list_page_size = 100  # conversations.list pages (a smaller ``limit`` wins), cursor = next index
        self.down = False
        self.refused: dict[str, str] = {}  # Web API method → the error Slack answers it with (e.g. missing_scope)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failures: deque[_Failure] = deque()
        self._messages: list[dict[str, Any]] = []
        self._uploads: dict[str, dict[str, Any]] = {}  # file ID → filename, length, alt_txt, data, shared
        self._upload_keys: dict[str, str] = {}  # the secret part of an upload URL → file ID
        self._requests: list[dict[str, Any]] = []
        self._seq = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SlackTestServer:
        handler = type("_BoundHandler", (_Handler,), {"slack": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="slack-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: afterwards connections are refused."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SlackTestServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what tests read ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every accepted message in its current state (after updates), oldest first."""
        with self._lock:
            return copy.deepcopy(self._messages)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: method, path, headers (lower-case names), body, raw, status."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def message(self, ts: str) -> dict[str, Any]:
        for msg in self.messages:
            if msg["ts"] == ts:
                return msg
        raise KeyError(ts)

    def replies(self, parent_ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") == parent_ts]

    def fail_next(
        self,
        status: FailureKind,
        count: int = 1,
        retry_after: float | None = None,
        *,
        error: str | None = None,
        delay: float = 3.0,
    ) -> None:
        """Answer the next ``count`` requests with a failure instead of handling them.

        ``status`` is an HTTP status (429 sends ``Retry-After`` when given; 200 with ``error`` is an
        ``ok: false`` answer), ``"close"`` drops the connection without an answer, ``"hang"`` waits
        ``delay`` seconds and then handles the request normally (a reply after the client gave up).
        """
        with self._lock:
            for _ in range(count):
                self._failures.append(_Failure(status, retry_after, error, delay))

    # -- request handling (called from handler threads) --------------------------------------------

    def _next_ts(self) -> str:
        self._seq += 1
        return f"{1_700_000_000 + self._seq}.{self._seq:06d}"

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    def _channel_id(self, channel: Any, *, id_only: bool = False) -> str | None:
        if not isinstance(channel, str) or not channel:
            return None
        if channel in self.channels.values():
            return channel
        if id_only:
            return None
        return self.channels.get(channel.removeprefix("#"))

    def _auth_error(self, headers: dict[str, str], body: dict[str, Any]) -> str | None:
        auth = headers.get("authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else body.get("token")
        if not token:
            return "not_authed"
        if token != self.token:
            return "invalid_auth"
        return None

    def _api(self, method: str, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        auth_error = self._auth_error(headers, body)
        if auth_error:
            return {"ok": False, "error": auth_error}
        if method in self.refused:
            return {"ok": False, "error": self.refused[method]}
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://clustermesh-test.slack.com/",
                "team": "clustermesh-test",
                "user": "mesh-bot",
                "team_id": "T000",
                "user_id": "U000",
                "bot_id": "B000",
            }
        if method == "conversations.info":
            return self._conversation_info(body)
        if method == "conversations.list":
            return self._conversation_list(body)
        if method == "chat.postMessage":
            return self._post_message(body)
        if method == "chat.update":
            return self._update_message(body)
        if method == "files.getUploadURLExternal":
            return self._upload_url(body)
        if method == "files.completeUploadExternal":
            return self._complete_upload(body)
        return {"ok": False, "error": "unknown_method"}

    def _conversation(self, name: str, channel_id: str) -> dict[str, Any]:
        return {
            "id": channel_id,
            "name": name,
            "is_channel": True,
            "is_private": False,
            "is_archived": name in self.archived,
            "is_member": name not in self.not_member,
        }

    def _conversation_info(self, body: dict[str, Any]) -> dict[str, Any]:
        """Like Slack: an ID only (a name is ``channel_not_found``)."""
        channel = body.get("channel")
        for name, channel_id in self.channels.items():
            if channel == channel_id:
                return {"ok": True, "channel": self._conversation(name, channel_id)}
        return {"ok": False, "error": "channel_not_found"}

    def _conversation_list(self, body: dict[str, Any]) -> dict[str, Any]:
        items = [self._conversation(n, i) for n, i in self.channels.items()]
        if str(body.get("exclude_archived", "")).lower() in ("1", "true"):
            items = [c for c in items if not c["is_archived"]]
        try:
            start = int(body.get("cursor") or 0)
            size = min(int(body.get("limit") or self.list_page_size), self.list_page_size)
        except ValueError:
            return {"ok": False, "error": "invalid_cursor"}
        page, rest = items[start : start + size], start + size < len(items)
        return {"ok": True, "channels": page, "response_metadata": {"next_cursor": str(start + size) if rest else ""}}

    def _check_payload(self, body: dict[str, Any], *, need_content: bool = True) -> dict[str, Any] | None:
        text = body.get("text")
        blocks = body.get("blocks")
        if need_content and not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return {"ok": False, "error": "msg_too_long"}
        if blocks is not None:
            try:
                _validate_blocks(blocks)
            except _BlocksError as e:
                return {"ok": False, "error": e.code, "errors": [e.detail]}
        return None

    def _post_message(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(body.get("channel"))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        problem = self._check_payload(body)
        if problem:
            return problem
        thread_ts = body.get("thread_ts") or None
        with self._lock:
            if thread_ts is not None and not any(
                m["ts"] == thread_ts and m["channel"] == channel and m.get("thread_ts") is None for m in self._messages
            ):
                return {"ok": False, "error": "thread_not_found"}
            msg: dict[str, Any] = {
                "type": "message",
                "channel": channel,
                "ts": self._next_ts(),
                "text": body.get("text") or "",
                "blocks": body.get("blocks") or [],
                "thread_ts": thread_ts,
                "via": "api",
                "bot_id": "B000",
                "edits": 0,
            }
            self._messages.append(msg)
            message = copy.deepcopy(msg)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def _update_message(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(body.get("channel"), id_only=True)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        problem = self._check_payload(body, need_content=False)
        if problem:
            return problem
        with self._lock:
            for msg in self._messages:
                if msg["ts"] == body.get("ts") and msg["channel"] == channel:
                    if msg["via"] != "api":
                        return {"ok": False, "error": "cant_update_message"}
                    if body.get("text") is not None:
                        msg["text"] = body["text"]
                    if body.get("blocks") is not None:
                        msg["blocks"] = body["blocks"]
                    msg["edits"] += 1
                    message = copy.deepcopy(msg)
                    return {
                        "ok": True,
                        "channel": channel,
                        "ts": msg["ts"],
                        "text": msg["text"],
                        "message": message,
                    }
        return {"ok": False, "error": "message_not_found"}

    def _webhook(self, body: dict[str, Any]) -> tuple[int, str]:
        problem = self._check_payload(body)
        if problem:
            return 400, str(problem["error"])
        with self._lock:
            self._messages.append(
                {
                    "type": "message",
                    "channel": self.webhook_channel,
                    "ts": self._next_ts(),
                    "text": body.get("text") or "",
                    "blocks": body.get("blocks") or [],
                    "thread_ts": body.get("thread_ts") or None,
                    "via": "webhook",
                    "edits": 0,
                }
            )
        return 200, "ok"


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """JSON or form, as slack-sdk sends them (``auth.test`` sends an empty body with a JSON type)."""
    if not raw.strip():
        return {}
    if "json" in content_type:
        parsed = json.loads(raw)
        return parsed if isinstance(parsed, dict) else {"_": parsed}
    form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    body: dict[str, Any] = dict(form)
    if isinstance(form.get("blocks"), str):
        try:
            body["blocks"] = json.loads(form["blocks"])
        except json.JSONDecodeError:
            body["blocks"] = form["blocks"]
    return body


class _Handler(BaseHTTPRequestHandler):
    slack: SlackTestServer
    server_version = "SlackTestServer/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep test output quiet."""

    def do_GET(self) -> None:
        """Read methods (``conversations.info``) come as GET with the arguments in the query string;
        shared files are downloaded with GET from their ``url_private``."""
        if self.path.startswith(FILES_PATH):
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, data = self.slack._download(self.path.partition("?")[0], headers)
            self._reply(status, "image/png" if status == 200 else "text/plain", data)
            return
        if not self.path.startswith("/api/"):
            self._reply(405, "text/plain", b"method_not_allowed")
            return
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, verb: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path.startswith(UPLOAD_PATH) and not self.slack.down:
            status, text = self.slack._receive_upload(self.path.partition("?")[0], raw)
            entry = {"method": verb, "path": UPLOAD_PATH, "headers": headers, "body": {}, "raw": "", "status": status}
            self.slack._log(entry)
            self._reply(status, "text/plain", text.encode())
            return
        try:
            body = _parse_body(raw, headers.get("content-type", ""))
        except (ValueError, UnicodeDecodeError):
            body = {}
        path, _, query = self.path.partition("?")
        for key, values in parse_qs(query, keep_blank_values=True).items():
            body.setdefault(key, values[-1])  # slack-sdk sends some arguments as query parameters
        entry: dict[str, Any] = {
            "method": verb,
            "path": path,
            "headers": headers,
            "body": body,
            "raw": raw.decode(errors="replace"),
            "status": None,
        }
        self.slack._log(entry)
        is_webhook = path.startswith("/services/")

        if self.slack.down:
            entry["status"] = "closed"
            self.close_connection = True
            return
        failure = self.slack._take_failure()
        if failure is not None:
            if failure.kind == "close":
                entry["status"] = "closed"
                self.close_connection = True
                return
            if failure.kind == "hang":
                self.slack._stopping.wait(failure.delay)
            else:
                status = int(failure.kind)
                entry["status"] = status
                headers_out = {}
                if failure.retry_after is not None:
                    headers_out["Retry-After"] = str(int(failure.retry_after))
                default_error = {429: "ratelimited", 500: "internal_error", 503: "service_unavailable"}
                error = failure.error or default_error.get(status, "fatal_error")
                if is_webhook:
                    webhook_error = "rate_limited" if status == 429 else error
                    self._reply(status, "text/plain", webhook_error.encode(), headers_out)
                else:
                    payload = json.dumps({"ok": False, "error": error}).encode()
                    self._reply(status, "application/json; charset=utf-8", payload, headers_out)
                return

        if is_webhook:
            if path != WEBHOOK_PATH:
                entry["status"] = 404
                self._reply(404, "text/plain", b"no_service")
                return
            status, text = self.slack._webhook(body)
            entry["status"] = status
            self._reply(status, "text/plain", text.encode())
            return
        if not path.startswith("/api/"):
            entry["status"] = 404
            self._reply(404, "text/plain", b"not found")
            return
        answer = self.slack._api(path[len("/api/") :], headers, body)
        entry["status"] = 200
        entry["answer"] = answer
        self._reply(200, "application/json; charset=utf-8", json.dumps(answer).encode())

    def _reply(self, status: int, content_type: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): Slack would still have posted the message
