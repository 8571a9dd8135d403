"""What every command module of the CLI shares."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and end the command with ``code`` (2: bad input, 1: failed)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
