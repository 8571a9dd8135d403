"""A small cobra/pflag: the command tree, flag parsing, and the errors and help cobra prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.agentcli.go import Result, Version
from sandbox.cilium_model import (
    AgentSnapshot,
)

# ---------------------------------------------------------------------------------------------------
# A small cobra/pflag: command tree, flag parsing, the errors and help cobra prints
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Flag:
    name: str
    usage: str
    shorthand: str = ""
    takes_value: bool = False  # string flag; otherwise bool
    value_name: str = "string"


_HELP_FLAG_NAME = "help"
# what a command does with the agent's snapshot, the CLI's version, the parsed flags and the arguments
Runner = Callable[[AgentSnapshot, Version, dict[str, Any], list[str]], Result]


@dataclass
class _Command:
    name: str
    short: str
    aliases: tuple[str, ...] = ()
    flags: tuple[_Flag, ...] = ()
    persistent: tuple[_Flag, ...] = ()
    run: Runner | None = None
    children: list[_Command] = field(default_factory=list)
    parent: _Command | None = None

    def add(self, *children: _Command) -> _Command:
        for child in children:
            child.parent = self
            self.children.append(child)
        return self

    @property
    def path(self) -> str:
        return f"{self.parent.path} {self.name}" if self.parent else self.name

    def find_child(self, name: str) -> _Command | None:
        for child in self.children:
            if name == child.name or name in child.aliases:
                return child
        return None

    def inherited(self) -> list[_Flag]:
        out: list[_Flag] = []
        node = self.parent
        while node is not None:
            out.extend(node.persistent)
            node = node.parent
        return out

    def local_flags(self) -> list[_Flag]:
        return [*self.flags, *self.persistent, _Flag(_HELP_FLAG_NAME, f"help for {self.name}", "h")]

    def all_flags(self) -> list[_Flag]:
        return [*self.local_flags(), *self.inherited()]


class _FlagError(Exception):
    pass


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # strconv.ParseBool's spellings
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _parse_bool(text: str, flag: _Flag, as_short: bool) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    shown = f"-{flag.shorthand}, --{flag.name}" if as_short and flag.shorthand else f"--{flag.name}"
    raise _FlagError(
        f'invalid argument "{text}" for "{shown}" flag: strconv.ParseBool: parsing "{text}": invalid syntax'
    )


def _parse_flags(cmd: _Command, args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """pflag's parser: ``--x=v``, ``--x v``, ``-x v``, ``-xv``, ``-x=v``, bundles of bools, ``--``."""
    flags = cmd.all_flags()
    by_name = {f.name: f for f in flags}
    by_short = {f.shorthand: f for f in flags if f.shorthand}
    values: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            flag = by_name.get(name)
            if flag is None:
                raise _FlagError(f"unknown flag: --{name}")
            if flag.takes_value:
                if not eq:
                    if i >= len(args):
                        raise _FlagError(f"flag needs an argument: --{name}")
                    value = args[i]
                    i += 1
                values[flag.name] = value
            else:
                values[flag.name] = _parse_bool(value, flag, False) if eq else True
            continue
        shorts = arg[1:]
        while shorts:
            char, shorts = shorts[0], shorts[1:]
            flag = by_short.get(char)
            if flag is None:
                raise _FlagError(f"unknown shorthand flag: '{char}' in {arg}")
            if flag.takes_value:
                if shorts.startswith("="):
                    value = shorts[1:]
                elif shorts:
                    value = shorts
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    raise _FlagError(f"flag needs an argument: '{char}' in -{char}")
                values[flag.name] = value
                shorts = ""
            elif shorts.startswith("="):
                values[flag.name] = _parse_bool(shorts[1:], flag, True)
                shorts = ""
            else:
                values[flag.name] = True
    return values, positional


def _strip_flags(args: list[str], cmd: _Command) -> list[str]:
    """cobra's ``stripFlags``: drop flags (and what looks like their values) to find subcommand names."""
    bools = {f.name for f in cmd.all_flags() if not f.takes_value}
    short_bools = {f.shorthand for f in cmd.all_flags() if not f.takes_value and f.shorthand}
    out: list[str] = []
    rest = list(args)
    while rest:
        s = rest.pop(0)
        if s == "--":
            break
        if s.startswith("--") and "=" not in s and s[2:] not in bools:
            if rest:
                rest.pop(0)
            continue
        if s.startswith("-") and not s.startswith("--") and "=" not in s and len(s) == 2 and s[1] not in short_bools:
            if rest:
                rest.pop(0)
            continue
        if s != "" and not s.startswith("-"):
            out.append(s)
    return out


def _flag_usages(flags: Sequence[_Flag]) -> str:
    """pflag ``FlagUsages``: names padded so usages start three spaces after the longest one."""
    rows: list[tuple[str, str]] = []
    for f in sorted(flags, key=lambda f: f.name):
        left = f"  -{f.shorthand}, --{f.name}" if f.shorthand else f"      --{f.name}"
        if f.takes_value:
            left += f" {f.value_name}"
        rows.append((left, f.usage))
    width = max(len(left) for left, _ in rows)
    return "".join(f"{left.ljust(width)}   {usage}\n" for left, usage in rows)


def _usage(cmd: _Command) -> str:
    """cobra's default usage template."""
    parts = ["Usage:"]
    if cmd.run is not None:
        parts.append(f"\n  {cmd.path} [flags]")
    if cmd.children:
        parts.append(f"\n  {cmd.path} [command]")
    if cmd.aliases:
        parts.append(f"\n\nAliases:\n  {', '.join((cmd.name, *cmd.aliases))}")
    if cmd.children:
        pad = max(11, *(len(c.name) for c in cmd.children))  # cobra's minNamePadding
        listed = "".join(f"\n  {c.name.ljust(pad)} {c.short}" for c in sorted(cmd.children, key=lambda c: c.name))
        parts.append(f"\n\nAvailable Commands:{listed}")
    parts.append(f"\n\nFlags:\n{_flag_usages(cmd.local_flags()).rstrip()}")
    inherited = cmd.inherited()
    if inherited:
        parts.append(f"\n\nGlobal Flags:\n{_flag_usages(inherited).rstrip()}")
    if cmd.children:
        parts.append(f'\n\nUse "{cmd.path} [command] --help" for more information about a command.')
    return "".join(parts) + "\n"


def _help(cmd: _Command) -> str:
    return f"{cmd.short}\n\n{_usage(cmd)}"


def _execute(root: _Command, args: list[str], snapshot: AgentSnapshot, version: Version) -> Result:
    """cobra's ``ExecuteC``: find the command, parse its flags, run it; errors exit 1 like Cilium's mains."""
    cmd = root
    remaining = list(args)
    while cmd.children:
        names = _strip_flags(remaining, cmd)
        if not names:
            break
        child = cmd.find_child(names[0])
        if child is None:
            if cmd is root:
                return (
                    1,
                    "",
                    f'Error: unknown command "{names[0]}" for "{root.path}"\nRun \'{root.path} --help\' for usage.\n',
                )
            break  # cobra accepts stray args below the root; a non-runnable command then prints its help
        remaining.remove(names[0])
        cmd = child
    try:
        values, positional = _parse_flags(cmd, remaining)
    except _FlagError as err:
        return 1, "", f"Error: {err}\n{_usage(cmd)}\n"
    if values.get(_HELP_FLAG_NAME) or cmd.run is None:
        return 0, _help(cmd), ""
    return cmd.run(snapshot, version, values, positional)
