"""What every ``pad-assets`` command shares: error mapping, suggestions, output, progress.

Exit statuses: 0 all well; 1 an operation failed or found problems (the reason on stderr,
no traceback for ``PadAssetsError``); 2 usage errors (click's); 130 interrupted; 141 when
the reader of stdout went away (``pad-assets cache stats | head``), quietly, as ``yes |
head`` does.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click

from ..errors import PadAssetsError

EXIT_PIPE = 141


class Failure(click.ClickException):
    """A ``PadAssetsError`` (or a found problem) as ``pad-assets CMD: error: ...`` + exit 1."""

    exit_code = 1

    def __init__(self, command: str, message: str, prefix: str = "error: ") -> None:
        super().__init__(message)
        self.command = command
        self.prefix = prefix

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.command}: {self.prefix}{self.message}", err=True)


def quiet_broken_pipe() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # no real file descriptor (e.g. captured output in tests): nothing to flush


class PadCommand(click.Command):
    """Maps ``PadAssetsError`` to exit 1 with the command's name, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PadAssetsError as exc:
            raise Failure(ctx.command_path, str(exc)) from None


class PadGroup(click.Group):
    """A group whose unknown sub-commands get a suggestion ("did you mean 'stats'?")."""

    command_class = PadCommand

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            options = self.list_commands(ctx)
            close = difflib.get_close_matches(name, options, n=2, cutoff=0.5)
            hint = (" Did you mean " + " or ".join(repr(c) for c in close) + "?") if close \
                else ""
            ctx.fail(f"no such command {name!r}.{hint} Expected one of: {', '.join(options)}.")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PadAssetsError as exc:
            raise Failure(ctx.command_path, str(exc)) from None
        except BrokenPipeError:
            # the reader of stdout went away (`| head`): stop quietly, as `yes | head` does
            quiet_broken_pipe()
            raise click.exceptions.Exit(EXIT_PIPE) from None


PadGroup.group_class = PadGroup


# ---- options shared by commands ------------------------------------------------------------
def cache_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=None, help="Cache directory (default: $PAD_CACHE_DIR or "
                        "~/.pad_cache).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the report as JSON.")(fn)


def settings(cache_dir: Path | None, offline: bool | None = None) -> Any:
    """Settings from the environment; ``--cache-dir`` here or on a parent command wins."""
    from ..settings import Settings

    if cache_dir is None:
        ctx = click.get_current_context(silent=True)
        while ctx is not None and cache_dir is None:
            cache_dir = (ctx.params or {}).get("cache_dir")
            ctx = ctx.parent
    return Settings.from_env(cache_dir=Path(cache_dir).expanduser() if cache_dir else None,
                             offline=offline)


# ---- output ---------------------------------------------------------------------------------
def console(err: bool = False) -> Any:
    """A rich console on stdout (or stderr): colour and the terminal's width on a TTY,
    plain text 120 columns wide in a pipe or file so tables do not wrap."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich would exit 1; a closed pipe is not a failure
            self.quiet = True
            quiet_broken_pipe()
            raise click.exceptions.Exit(EXIT_PIPE)

    stream = sys.stderr if err else sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return _Console(file=stream, width=None if tty else 120, highlight=False,
                    no_color=not tty, soft_wrap=not tty)


def emit_json(report: Any) -> None:
    data = report.as_dict() if hasattr(report, "as_dict") else report
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def stderr_is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextmanager
def progress(what: str) -> Iterator[None]:
    """A spinner with elapsed time on stderr while ``what`` runs; silent when stderr is not
    a terminal (scripts, CI, pipes) so logs stay clean."""
    if not stderr_is_tty():
        with nullcontext():
            yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console(err=True), transient=True) as bar:
        bar.add_task(what, total=None)
        yield


class progress_bar:  # noqa: N801 - used like a function: ``with progress_bar(...)``
    """A context manager with an ``update(done, total)`` callback that draws a bar on
    stderr; silent (a no-op callback) when stderr is not a terminal."""

    def __init__(self, what: str, unit: str = "shards") -> None:
        self.what, self.unit = what, unit
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> progress_bar:
        if stderr_is_tty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn(self.unit),
                                 TimeElapsedColumn(), console=console(err=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None


def problem(command: str, message: str) -> None:
    """A found problem: the reason on stderr, exit status 1."""
    raise Failure(command, message, prefix="")
