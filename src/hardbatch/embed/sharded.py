"""Teacher embeddings computed by all ranks of a torch.distributed group, each encoding a share of the texts.

Under ``torchrun --nproc-per-node W -m hardbatch mine ...`` without ``--query-emb``/``--positive-emb``, every
rank holds the same pairs; :func:`embed_pairs_sharded` gives every rank the (N, d) query and positive
embeddings that :func:`~hardbatch.embed.pairs.embed_pairs` would compute in one process, bit for bit:

1. Every rank builds the single-process schedule of forward passes
   (:func:`~hardbatch.embed.encode.schedule_encoding`: deduplicated values, longest first, ``batch_size`` per
   batch) and encodes batches ``r, r + W, r + 2W, ...`` of it. The shares are batches, not row ranges
   ``[r·N/W, (r+1)·N/W)``: a batch then holds exactly the texts it holds in one process, so its padding, and
   therefore every float of its output, is the same (a row range would re-batch the texts and change the
   last bits, enough to flip near-ties in the teacher ranks). Dealing the longest-first batches round robin
   also gives every rank about the same number of tokens.
2. The shards are exchanged with ``dist.all_gather`` in blocks of rows (gloo on CPU, NCCL on GPU:
   :func:`hardbatch.distributed.comm_device`), so every rank ends with all U unique rows, and the rows are
   expanded to the N texts as in one process.
3. Cache (the contract of :mod:`hardbatch.embed.cache`, same files and sidecars as one process): rank 0
   alone reads the cache first and tells the others whether it is valid. On a hit every rank memory-maps
   the file; a rank that cannot read it (a directory local to rank 0's node) receives rank 0's rows by
   ``dist.broadcast`` instead. On a miss the ranks encode as above and rank 0 alone writes the combined
   array, atomically, once; the other ranks keep their in-memory copy and never write.

Cost per rank, for N texts (U unique) of at most L tokens, d dimensions and W ranks: time O(U·L²/W) in the
transformer plus O(U·d) to receive the other shards; memory O(U·d) for the combined rows (plus, while they
are exchanged, one block of at most 64 MiB per rank and one batch of activations on the device).
Without an initialised group (or with one rank) the functions are :func:`~hardbatch.embed.pairs.embed_pairs`
and :func:`~hardbatch.embed.encode.encode_with_loader`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from hardbatch import errors
from hardbatch.distributed import broadcast_from_rank0, comm_device, is_distributed, raise_together
from hardbatch.embed.cache import read_cache, save_embeddings
from hardbatch.embed.encode import (
    check_takes_images,
    encode_batch,
    encode_with_loader,
    finish_encoding,
    prepare_encoding,
    restore_training_mode,
    schedule_encoding,
    temporary_max_seq_length,
)
from hardbatch.embed.pairs import PairEmbeddings, embed_pair_columns
from hardbatch.progress import progress

__all__ = ["embed_pairs_sharded", "encode_sharded"]

#: Bytes of one rank's piece of an all_gather / broadcast round (bounds the exchange buffers).
_BLOCK_BYTES = 64 << 20


def embed_pairs_sharded(
    dataset: Any,
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    normalize: bool = True,
    device: str | None = "auto",
    show_progress: bool | None = None,
    on_stale: Literal["rebuild", "error"] = "rebuild",
    query_prompt: str | None = None,
    document_prompt: str | None = None,
) -> PairEmbeddings:
    """:func:`~hardbatch.embed.pairs.embed_pairs` with the encoding split over the ranks of the default group.

    Call it on every rank with the same dataset, model and options (a collective). Arguments and cache files
    are those of :func:`~hardbatch.embed.pairs.embed_pairs`; ``device`` is each rank's own (e.g. "auto" after
    ``torch.cuda.set_device(local_rank)``).

    Returns:
        :class:`~hardbatch.embed.pairs.PairEmbeddings` on every rank, equal to the single-process result.
        Rank 0's arrays are memory maps of the cache; another rank's are memory maps when it can read the
        cache, else in-memory arrays (its ``query_path``/``positive_path`` then name rank 0's files).

    Raises:
        DataError, ConfigError, StaleCacheError: as :func:`~hardbatch.embed.pairs.embed_pairs`, on every rank.

    Example:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> from hardbatch.embed.models import make_tiny_model
        >>> pairs = SimpleNamespace(queries=["add numbers", "read file"], positives=["def add()", "def read()"])
        >>> embed_pairs_sharded(pairs, make_tiny_model(), tempfile.mkdtemp(), show_progress=False).query.shape
        (2, 32)
    """
    return embed_pair_columns(
        dataset, model, out_dir, encode=encode_sharded, batch_size=batch_size,
        max_seq_length=max_seq_length, normalize=normalize, device=device, show_progress=show_progress,
        on_stale=on_stale, query_prompt=query_prompt, document_prompt=document_prompt,
    )  # fmt: skip


def encode_sharded(
    texts: Sequence[Any],
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
    """:func:`~hardbatch.embed.encode.encode_with_loader` with the forward passes dealt over the ranks.

    Args:
        texts: the same N strings (or images) on every rank.
        get_encoder: returns ``(SentenceTransformer, device)``; called only on a cache miss, and only on a
            rank that has batches to encode.
        model_info, batch_size, max_seq_length, normalize, cache_path, show_progress, on_stale: as
            :func:`~hardbatch.embed.encode.encode_with_loader` (the progress bar is rank 0's).

    Returns:
        (N, d) float32 array on every rank, equal to the single-process result.
    """
    if not is_distributed():
        return encode_with_loader(
            texts, get_encoder, model_info=model_info, batch_size=batch_size, max_seq_length=max_seq_length,
            normalize=normalize, cache_path=cache_path, show_progress=show_progress, on_stale=on_stale,
        )  # fmt: skip
    texts, key = prepare_encoding(texts, model_info, batch_size, max_seq_length, normalize, cache_path)
    main = dist.get_rank() == 0
    if key is not None:
        cached = _rank0_cache(cache_path, key, on_stale)
        if cached is not False:
            return cached

    schedule = schedule_encoding(texts, batch_size)
    mine = schedule.batches[dist.get_rank() :: dist.get_world_size()]
    local: list[np.ndarray] = []
    failure = None
    try:
        if mine:
            encoder, encode_device = get_encoder()
            if schedule.has_images:
                check_takes_images(encoder)
            label = f"encoding {len(schedule.unique):,} {schedule.what} on {dist.get_world_size()} ranks"
            show = show_progress if main else False
            with temporary_max_seq_length(encoder, max_seq_length), restore_training_mode(encoder):
                for batch in progress(mine, label, show=show):
                    local.append(encode_batch(encoder, schedule, batch, normalize, encode_device))
    except Exception as exc:  # an unreadable image, a model that does not load, out of memory...
        failure = exc
    raise_together(failure, "embedding")
    result = _all_gather_rows(local, schedule.batches, len(schedule.unique))
    embeddings = finish_encoding(result, schedule, texts)  # the same check, the same error, on every rank
    if key is None:
        return embeddings
    # Rank 0 writes the combined cache once; a failed write stops every rank.
    written = None
    if main:
        try:
            written = save_embeddings(cache_path, embeddings, key)
        except Exception as exc:
            failure = exc
    raise_together(failure, "embedding")
    return written if main else embeddings


def _rank0_cache(path: Any, key: dict[str, Any], on_stale: str) -> np.ndarray | Literal[False]:
    """Rank 0's verdict on the cache, for every rank: the cached rows, or False on a miss.

    Only rank 0 reads first (one stale warning, one decision); the others then memory-map the file, or
    receive rank 0's rows when they cannot read it. An error on rank 0 (a stale cache with
    ``on_stale="error"``, an unreadable file) is raised on every rank (:func:`hardbatch.distributed.raise_together`).
    """
    cached, failure = None, None
    if dist.get_rank() == 0:
        try:
            cached = read_cache(path, key, on_stale=on_stale)  # type: ignore[arg-type]
        except Exception as exc:
            failure = exc
    raise_together(failure, "embedding")
    if not broadcast_from_rank0(cached is not None):
        return False
    if dist.get_rank() != 0:
        try:
            cached = read_cache(path, key, on_stale="error")
        except errors.HardbatchError:
            cached = None
    readable = torch.tensor([int(cached is not None)], dtype=torch.int32, device=comm_device())
    dist.all_reduce(readable, op=dist.ReduceOp.MIN)
    if int(readable.item()):
        return cached
    return _broadcast_rows(cached if dist.get_rank() == 0 else None, key["num_texts"])


def _broadcast_rows(array: np.ndarray | None, rows: int) -> np.ndarray:
    """Rank 0's (rows, d) float32 array on every rank, sent in blocks of at most ``_BLOCK_BYTES``."""
    dim = broadcast_from_rank0(None if array is None else int(array.shape[1]))
    out = array if array is not None else np.empty((rows, dim), dtype=np.float32)
    dev = comm_device()
    step = max(1, _BLOCK_BYTES // (4 * max(1, dim)))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        if array is not None:
            block = torch.as_tensor(np.ascontiguousarray(array[start:stop]), device=dev)
        else:
            block = torch.empty(stop - start, dim, dtype=torch.float32, device=dev)
        dist.broadcast(block, src=0)
        if array is None:
            out[start:stop] = block.cpu().numpy()
    return out


def _all_gather_rows(local: list[np.ndarray], batches: list[list[int]], num_unique: int) -> np.ndarray:
    """The (U, d) unique rows on every rank, from each rank's vectors of batches ``r::W``.

    Every rank knows the schedule, so the row ids of every other rank's vectors are known and only the
    vectors travel: equal-sized blocks (the last ones zero-padded) through ``dist.all_gather``.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = comm_device()
    # A rank without batches (more ranks than batches) learns d from the others.
    dim_t = torch.tensor([local[0].shape[1] if local else 0], dtype=torch.int64, device=dev)
    dist.all_reduce(dim_t, op=dist.ReduceOp.MAX)
    dim = int(dim_t.item())
    if dim == 0:
        raise RuntimeError("no rank encoded anything although the schedule has batches")
    owned = [
        np.asarray([row for batch in batches[r::world] for row in batch], dtype=np.int64)
        for r in range(world)
    ]
    mine = np.concatenate(local) if local else np.empty((0, dim), np.float32)
    assert len(mine) == len(owned[rank])
    result = np.empty((num_unique, dim), dtype=np.float32)
    longest = max(len(rows) for rows in owned)
    step = max(1, _BLOCK_BYTES // (4 * dim))
    for start in range(0, longest, step):
        size = min(step, longest - start)
        piece = torch.zeros(size, dim, dtype=torch.float32, device=dev)
        part = mine[start : start + size]
        piece[: len(part)] = torch.as_tensor(part, device=dev)
        pieces = [torch.empty_like(piece) for _ in range(world)]
        dist.all_gather(pieces, piece)
        for r in range(world):
            rows = owned[r][start : start + size]
            result[rows] = pieces[r][: len(rows)].cpu().numpy()
    return result
