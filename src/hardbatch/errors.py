"""Exception types. Every error a user can cause is a :class:`HardbatchError` with a one-line message.

The CLI prints ``str(error)`` alone (no traceback) unless ``--debug`` is given, so messages must name the
file, line/row and field that is wrong, and say what was expected.
"""

from __future__ import annotations


class HardbatchError(ValueError):
    """Base class for errors caused by the user's input or configuration."""


class DataError(HardbatchError):
    """A dataset, embedding file or plan is malformed (names the file, row and field)."""


class ConfigError(HardbatchError):
    """Parameters are inconsistent (e.g. batch size not a multiple of the cluster size)."""


class StaleCacheError(HardbatchError):
    """A cached artefact was built from different inputs or parameters than the ones given now."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that provides it."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{module}'. Install it with: pip install 'hardbatch[{extra}]'"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, purpose) from exc


class TrainingDivergedError(HardbatchError):
    """Training produced a non-finite loss, gradient or weight (usually a learning rate that is too high)."""
