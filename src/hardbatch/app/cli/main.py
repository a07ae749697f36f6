"""The ``hardbatch`` command line.

Each command group lives in its own module under ``hardbatch.app.cli`` and exposes ``register(app)``. Heavy
libraries (torch, sentence-transformers) are imported inside the commands so ``--help`` stays fast.
Errors that a user caused (:class:`hardbatch.errors.HardbatchError`, missing extras, missing files, and
operating-system errors such as a read-only folder, a file where a folder is expected or a full disk) are
printed as one red line and exit with status 2; ``--debug`` shows the traceback instead. A broken internal
invariant (``RuntimeError``, ``AssertionError``, ``TypeError``...) keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console

from hardbatch import __version__

# Command modules, in pipeline order (the order their commands appear in --help).
COMMAND_MODULES = [
    "data_cmd",
    "embed_cmd",
    "evaluate_cmd",
    "mine_cmd",
    "inspect_cmd",
    "train_cmd",
    "experiment_cmd",
    "demo_cmd",
]

app = typer.Typer(
    name="hardbatch",
    help="Break the batch barrier of contrastive learning: mine hard batches (B3, GCBS) and train with an "
    "exact, memory-linear InfoNCE loss.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hardbatch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars."),
) -> None:
    """hardbatch command line."""
    _state["debug"] = debug
    if quiet:
        os.environ["HARDBATCH_PROGRESS"] = "0"


for _name in COMMAND_MODULES:
    importlib.import_module(f"hardbatch.app.cli.{_name}").register(app)


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do.

    Example:
        >>> import errno
        >>> os_error_message(OSError(errno.ENOSPC, "No space left on device", "runs/a/plan.parquet"))
        'cannot write runs/a/plan.parquet: No space left on device (free some space or choose another -o/--output)'
    """
    import errno

    path = exc.filename if exc.filename is not None else None
    reason = exc.strerror or str(exc)
    hints = {
        errno.ENOSPC: "free some space or choose another -o/--output",
        errno.EDQUOT: "free some space or choose another -o/--output",
        errno.EROFS: "choose another -o/--output",
        errno.EACCES: "check the permissions or choose another path",
        errno.EPERM: "check the permissions or choose another path",
        errno.ENOTDIR: "a file stands where a folder is expected",
        errno.EISDIR: "a folder stands where a file is expected",
    }
    verb = "cannot write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "cannot use"
    where = f"{verb} {path}: " if path else ""
    hint = hints.get(exc.errno)
    return f"{where}{reason}" + (f" ({hint})" if hint else "")


# Spellings from before the one-convention CLI, still accepted with a note: command → old → new (None: the
# value becomes the positional DATA argument).
LEGACY_SPELLINGS: dict[str, dict[str, str | None]] = {
    "mine b3": {"--out": "--output"},
    "mine gcbs": {"--out": "--output"},
    "embed": {"--out": "--output"},
    "data codesearch": {"--out": "--output"},
    "data validate": {"-m": "--map"},
    "data convert": {"-m": "--map"},
    "inspect": {"--out": "--output", "--data": None, "-d": None},
    "evaluate": {"--data": None, "-d": None},
    "train": {"--output-dir": "--output"},
    "demo": {"--output-dir": "--output"},
    "experiment": {"--output-dir": "--output"},
}


def modernise_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Rewrite old option spellings (``--out``, ``--output-dir``, ``--data X``) to today's.

    Returns:
        ``(argv, notes)``: the rewritten arguments and one note per rewritten spelling.

    Example:
        >>> modernise_argv(["-q", "evaluate", "--data", "pairs.jsonl", "--out", "x"])[0]
        ['-q', 'evaluate', 'pairs.jsonl', '--out', 'x']
        >>> modernise_argv(["mine", "b3", "d.jsonl", "--out=p.parquet"])
        (['mine', 'b3', 'd.jsonl', '--output=p.parquet'], ['--out is now -o/--output'])
    """
    start = 0
    while start < len(argv) and argv[start].startswith("-"):
        start += 1  # global options (--debug, --quiet)
    words = argv[start : start + 2]
    key = " ".join(words) if words[:1] in (["mine"], ["data"]) else " ".join(words[:1])
    table = LEGACY_SPELLINGS.get(key)
    if not table:
        return argv, []
    out, notes = list(argv[: start + len(key.split())]), []
    for token in argv[len(out) :]:
        if token == "--":
            table = {}  # everything after -- is positional
        name, eq, value = token.partition("=")
        if name not in table:
            out.append(token)
            continue
        new = table[name]
        if new is None:
            notes.append(f"{name} DATA is now the positional DATA argument")
            if eq:
                out.append(value)
        else:
            short = {"--output": "-o/--output"}.get(new, new)
            notes.append(f"{name} is now {short}")
            out.append(new + eq + value)
    return out, sorted(set(notes))


def run() -> None:
    """Entry point: run the app, turning user errors into one readable line."""
    from hardbatch.errors import HardbatchError, MissingExtraError

    sys.argv[1:], notes = modernise_argv(sys.argv[1:])
    for note in notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)

    def fail(message: str) -> None:
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)

    try:
        app(standalone_mode=False)
    except (HardbatchError, MissingExtraError) as exc:
        if _state["debug"]:
            raise
        fail(_escape(str(exc)))
    except OSError as exc:  # read-only folder, a file where a folder is expected, disk full, ...
        if _state["debug"]:
            raise
        fail(_escape(os_error_message(exc)))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort as exc:
        # click turns any EOFError into Abort ("aborted", as if Ctrl-D): a truncated file is an error.
        if isinstance(exc.__cause__, EOFError) and not isinstance(exc.__cause__, KeyboardInterrupt):
            if _state["debug"]:
                raise exc.__cause__ from None
            fail(_escape(f"unexpected end of a file ({exc.__cause__ or 'EOFError'}); --debug shows where"))
        err_console.print("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # Usage errors come from the click that typer bundles; recognise them by their interface.
        if hasattr(exc, "show") and hasattr(exc, "exit_code") and not _state["debug"]:
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


if __name__ == "__main__":
    run()
