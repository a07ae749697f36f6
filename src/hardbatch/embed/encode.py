"""Encode texts (and images) with a sentence-transformers model into a float32 matrix, optionally cached.

Any value may be an :class:`~hardbatch.data.images.ImageRef` when the model takes images (a CLIP-style
model): images are decoded batch by batch, so memory holds one batch of pixels at a time.

Texts are deduplicated and encoded longest first, in batches of ``batch_size``: padding inside a batch is
then minimal (faster), and an out-of-memory error shows up on the first batch rather than at the end.
The original order is restored before returning.

Time O(U · L²) for U unique texts of at most L tokens (the transformer); memory O(N·d) for the result
(plus one batch of activations on the device). With ``cache_path`` the result is written once as a
memory-mappable ``.npy`` (see :mod:`hardbatch.embed.cache`) and later calls return the memory map.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hardbatch.data.images import ImageRef, value_token
from hardbatch.embed.cache import cache_key, read_cache, save_embeddings
from hardbatch.embed.fingerprint import model_fingerprint
from hardbatch.embed.models import load_model
from hardbatch.errors import ConfigError, DataError
from hardbatch.io import hash_texts
from hardbatch.progress import progress
from hardbatch.validation import check_positive

__all__ = [
    "EncodeSchedule",
    "check_takes_images",
    "check_texts",
    "encode_batch",
    "encode_texts",
    "encode_with_loader",
    "finish_encoding",
    "prepare_encoding",
    "resolve_encoder",
    "restore_training_mode",
    "schedule_encoding",
    "temporary_max_seq_length",
]


def encode_texts(
    texts: Sequence[str],
    model: Any,
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    normalize: bool = True,
    cache_path: str | os.PathLike[str] | None = None,
    device: str | None = "auto",
    show_progress: bool | None = None,
    on_stale: Literal["rebuild", "error"] = "rebuild",
) -> np.ndarray:
    """Embed ``texts`` with ``model``; reuse or write a cache at ``cache_path``.

    Args:
        texts: N strings.
        model: a ``SentenceTransformer`` instance, a local model directory, or ``"default"`` (packaged
            all-MiniLM-L6-v2, loaded offline).
        batch_size: texts per forward pass.
        max_seq_length: truncate inputs to this many tokens (None: the model's own setting). For an
            instance the setting is changed only for this call.
        normalize: L2-normalise the embeddings.
        cache_path: a ``.npy`` path. A matching cache is returned without loading the model; a stale one is
            rebuilt (or raises :class:`~hardbatch.errors.StaleCacheError` with ``on_stale="error"``).
        device: "auto" (for a path: CUDA when available; for an instance: wherever it already is), or a
            torch device string.
        show_progress: progress bar (default: on unless ``HARDBATCH_PROGRESS=0``).
        on_stale: what to do with a stale cache.

    Returns:
        (N, d) float32 array; a read-only memory map when ``cache_path`` is given.

    Raises:
        DataError: a text is not a string, the list is empty, or the model produced NaN/inf (names the row).
        ConfigError: ``batch_size`` or ``max_seq_length`` is not a positive integer.

    Example:
        >>> from hardbatch.embed.models import make_tiny_model
        >>> encode_texts(["def add(a, b)", "sum two numbers"], make_tiny_model(), show_progress=False).shape
        (2, 32)
    """
    return encode_with_loader(
        texts,
        lambda: resolve_encoder(model, device),
        model_info=model_fingerprint(model) if cache_path is not None else None,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        normalize=normalize,
        cache_path=cache_path,
        show_progress=show_progress,
        on_stale=on_stale,
    )


def encode_with_loader(
    texts: Sequence[str],
    get_encoder: Callable[[], tuple[Any, str | None]],
    *,
    model_info: dict[str, str] | None,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    normalize: bool = True,
    cache_path: str | os.PathLike[str] | None = None,
    show_progress: bool | None = None,
    on_stale: Literal["rebuild", "error"] = "rebuild",
) -> np.ndarray:
    """:func:`encode_texts` with the model supplied by ``get_encoder()``, called only on a cache miss.

    ``model_info`` (from :func:`~hardbatch.embed.fingerprint.model_fingerprint`) is required with
    ``cache_path``; callers embedding several columns compute it once and share one loaded model.
    """
    texts, key = prepare_encoding(texts, model_info, batch_size, max_seq_length, normalize, cache_path)
    if key is not None:
        cached = read_cache(cache_path, key, on_stale=on_stale)
        if cached is not None:
            return cached

    encoder, encode_device = get_encoder()
    with temporary_max_seq_length(encoder, max_seq_length), restore_training_mode(encoder):
        embeddings = _encode_unique(encoder, texts, batch_size, normalize, encode_device, show_progress)
    if key is not None:
        return save_embeddings(cache_path, embeddings, key)
    return embeddings


def prepare_encoding(
    texts: Sequence[Any],
    model_info: dict[str, str] | None,
    batch_size: int,
    max_seq_length: int | None,
    normalize: bool,
    cache_path: str | os.PathLike[str] | None,
) -> tuple[list[Any], dict[str, Any] | None]:
    """What every encoder checks first: the texts as a list, the sizes, and the cache key (``None``
    without ``cache_path``).

    Raises:
        DataError: as :func:`check_texts`.
        ConfigError: a size that is not a positive integer; ``cache_path`` without ``model_info``.
    """
    texts = check_texts(texts)
    check_positive(batch_size, "batch_size")
    if max_seq_length is not None:
        check_positive(max_seq_length, "max_seq_length")
    if cache_path is None:
        return texts, None
    if model_info is None:
        raise ConfigError("model_info is required to cache embeddings")
    key = cache_key(model_info, hash_texts(map(value_token, texts)), len(texts), max_seq_length, normalize)
    return texts, key


def resolve_encoder(model: Any, device: str | None = "auto") -> tuple[Any, str | None]:
    """Return ``(SentenceTransformer, device for encode())`` for an instance, a path or ``"default"``."""
    if isinstance(model, str | os.PathLike):
        from hardbatch.device import resolve_device

        target = str(resolve_device(device))
        return load_model(model, device=target), target
    if not hasattr(model, "encode"):
        raise ConfigError(
            f"model must be a SentenceTransformer, a model directory or 'default', got {type(model).__name__}"
        )
    # An instance stays where the caller put it (e.g. on the training GPU) unless a device is named.
    return model, None if device in (None, "auto") else str(device)


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts (or images) as a list; :class:`DataError` for a single string or an empty input."""
    if isinstance(texts, str):
        raise DataError("texts must be a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise DataError("no texts to encode")
    for row, text in enumerate(texts):
        if not isinstance(text, str) and type(text) is not ImageRef:
            raise DataError(f"texts: row {row} is {type(text).__name__}, expected a string or an ImageRef")
    return texts


@contextlib.contextmanager
def temporary_max_seq_length(encoder: Any, max_seq_length: int | None) -> Iterator[None]:
    """Set ``encoder.max_seq_length`` for the block and restore it afterwards (``None``: leave it)."""
    if max_seq_length is None:
        yield
        return
    previous = encoder.max_seq_length
    encoder.max_seq_length = int(max_seq_length)
    if "image" in getattr(encoder, "modalities", ()):
        from hardbatch.embed.clip import cap_max_seq_length

        cap_max_seq_length(encoder)  # never past a CLIP text tower's position table (77 for OpenAI CLIP)
    try:
        yield
    finally:
        encoder.max_seq_length = previous


@contextlib.contextmanager
def restore_training_mode(encoder: Any) -> Iterator[None]:
    """Put a model that was training back in training mode after the block (``encode`` leaves it in eval)."""
    # SentenceTransformer.encode switches to eval mode and leaves it there; a model being trained must not be
    # left without dropout after an evaluation.
    was_training = bool(getattr(encoder, "training", False))
    try:
        yield
    finally:
        if was_training:
            encoder.train()


@dataclass
class EncodeSchedule:
    """How :func:`encode_texts` splits N values into forward passes (the same on every process).

    Attributes:
        unique: the U distinct values, in order of first occurrence.
        inverse: (N,) int64 index of each value's row in ``unique``.
        batches: lists of rows of ``unique``: texts longest first, then images, ``batch_size`` per batch.
        what: "texts", "images" or "texts and images" (for the progress bar).
    """

    unique: list[Any]
    inverse: np.ndarray
    batches: list[list[int]]
    what: str

    @property
    def has_images(self) -> bool:
        return self.what != "texts"


def schedule_encoding(texts: list[Any], batch_size: int) -> EncodeSchedule:
    """Deduplicate ``texts`` and cut the unique values into batches (texts longest first, then images).

    Example:
        >>> schedule_encoding(["ab", "a", "abc", "a"], 2).batches
        [[2, 0], [1]]
    """
    first_row: dict[Any, int] = {}
    inverse = np.fromiter(
        (first_row.setdefault(t, len(first_row)) for t in texts), dtype=np.int64, count=len(texts)
    )
    unique = list(first_row)
    # Texts longest first, then images: every batch holds one modality (a CLIP-style model embeds a
    # text batch and an image batch with different towers, and cannot take a mixed list).
    texts_first = [i for i in range(len(unique)) if type(unique[i]) is str]
    images = [i for i in range(len(unique)) if type(unique[i]) is not str]
    texts_first.sort(key=lambda i: -len(unique[i]))
    batches = [texts_first[start : start + batch_size] for start in range(0, len(texts_first), batch_size)]
    batches += [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
    what = "texts" if not images else ("images" if not texts_first else "texts and images")
    return EncodeSchedule(unique, inverse, batches, what)


def encode_batch(
    encoder: Any, schedule: EncodeSchedule, batch: list[int], normalize: bool, device: str | None
) -> np.ndarray:
    """The (len(batch), d) float32 embeddings of one scheduled batch (images decoded now)."""
    vectors = encoder.encode(
        [_model_input(schedule.unique[i], i, schedule.inverse) for i in batch],
        batch_size=len(batch),
        show_progress_bar=False,
        convert_to_numpy=True,
        normalize_embeddings=normalize,
        device=device,
    )
    return np.asarray(vectors, dtype=np.float32)


def finish_encoding(result: np.ndarray, schedule: EncodeSchedule, texts: list[Any]) -> np.ndarray:
    """Check the (U, d) unique embeddings are finite and expand them to the (N, d) rows of ``texts``."""
    _check_finite(result, schedule.unique, texts, schedule.inverse)
    # Every text gets the vector of its first occurrence; skip the copy when nothing repeats.
    return result if len(schedule.unique) == len(texts) else result[schedule.inverse]


def _encode_unique(
    encoder: Any, texts: list[str], batch_size: int, normalize: bool, device: str | None, show: bool | None
) -> np.ndarray:
    schedule = schedule_encoding(texts, batch_size)
    if schedule.has_images:
        check_takes_images(encoder)
    result: np.ndarray | None = None
    for batch in progress(schedule.batches, f"encoding {len(schedule.unique):,} {schedule.what}", show=show):
        vectors = encode_batch(encoder, schedule, batch, normalize, device)
        if result is None:
            result = np.empty((len(schedule.unique), vectors.shape[1]), dtype=np.float32)
        result[batch] = vectors
    if result is None:
        raise DataError("nothing to encode: the list of texts is empty")
    return finish_encoding(result, schedule, texts)


def check_takes_images(model: Any) -> None:
    """Raise a ConfigError unless ``model`` (a SentenceTransformer) has an image modality."""
    modalities = getattr(model, "modalities", ["text"])
    if "image" not in modalities and "message" not in modalities:
        raise ConfigError(
            f"the data holds images but the model takes only {', '.join(map(str, modalities))}; use an "
            "image-text model (hardbatch.embed.make_tiny_clip(), a sentence-transformers CLIP, OpenCLIP)"
        )


def _model_input(value: Any, unique_row: int, inverse: np.ndarray) -> Any:
    """A text as is; an image decoded now (only this batch's images are in memory)."""
    if type(value) is str:
        return value
    try:
        return value.load()
    except DataError as exc:
        row = int(np.flatnonzero(inverse == unique_row)[0])
        raise DataError(f"row {row}: {exc}") from None


def _check_finite(vectors: np.ndarray, unique: list[str], texts: list[str], inverse: np.ndarray) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    if finite.all():
        return
    bad_unique = int(np.flatnonzero(~finite)[0])
    row = int(np.flatnonzero(inverse == bad_unique)[0])
    raise DataError(
        f"the model produced NaN/inf embeddings, first for {'text' if type(texts[row]) is str else 'image'} "
        f"row {row} ({str(texts[row])[:60]!r}); "
        "check the model weights and inputs"
    )
