"""The ``hardbatch`` command line.

Each command group lives in its own module under ``hardbatch.app.cli`` and exposes ``register(app)``. Heavy
libraries (torch, sentence-transformers) are imported inside the commands so ``--help`` stays fast.
Errors that a user caused (:class:`hardbatch.errors.HardbatchError`, missing extras, missing files) are
printed as one red line and exit with status 2; ``--debug`` shows the traceback instead.
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


def run() -> None:
    """Entry point: run the app, turning user errors into one readable line."""
    from hardbatch.errors import HardbatchError, MissingExtraError

    try:
        app(standalone_mode=False)
    except (HardbatchError, MissingExtraError, FileNotFoundError) as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
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


if __name__ == "__main__":
    run()
