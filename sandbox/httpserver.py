"""Serving sandbox apps: one asyncio loop in a daemon thread, many uvicorn HTTPS servers inside it.

All clusters share one loop so their stores and controllers never need locks; the blocking clients
(tests, the pipeline, kubectl) live in other threads or processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread; ``call``/``run`` hand work to it from other threads."""

    def __init__(self, name: str = "sandbox-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        # cancel whatever is still pending so the loop closes without "Task was destroyed" noise
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def start(self) -> LoopThread:
        self._thread.start()
        self._started.wait()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending tasks are cancelled) and wait for the thread to end."""
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a sync ``fn(*args)`` on the loop thread; returns its result or raises its exception."""
        if self.in_loop_thread:
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result (not from the loop thread itself)."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called from the loop thread; await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host: many of them share one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class RunningServer:
    """A started server: where it listens and how to stop it."""

    port: int
    host: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Graceful shutdown; open keep-alive and watch connections get ``timeout_graceful_shutdown``."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_https_server(
    app: ASGIApp,
    *,
    certfile: str,
    keyfile: str,
    host: str = "127.0.0.1",
    port: int = 0,
    date_header: bool = True,
) -> RunningServer:
    """Start uvicorn for ``app`` inside the running loop and return once it listens.

    ``date_header=False``: the app sets ``Date`` itself (a cluster's API, at its calendar time).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ws="websockets-sansio",
        http="h11",
        timeout_graceful_shutdown=1,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        date_header=date_header,
    )
    server = _EmbeddedServer(config)

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind; a task must not
            raise OSError(f"could not start the HTTPS server on {host}:{port} (exit {exc.code})") from None

    task = asyncio.get_running_loop().create_task(serve(), name=f"uvicorn-{host}:{port}")
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise OSError(f"the HTTPS server on {host}:{port} stopped during startup")
        await asyncio.sleep(0.01)
    sockets = server.servers[0].sockets if server.servers else ()
    bound = sockets[0].getsockname()[1] if sockets else port
    return RunningServer(port=int(bound), host=host, server=server, task=task)
