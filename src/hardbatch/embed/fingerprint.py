"""Identify a model by what determines its embeddings, so cached embeddings can be checked for staleness.

* A model given by path (or ``"default"``) is identified by its resolved directory and a fingerprint of its
  files: small files (configs, tokenizer, pooling settings; < 4 MiB) by content, large weight files by
  name, size, modification time and, for ``.safetensors``, the header (tensor names, dtypes, shapes,
  offsets). Computing it never loads the weights, so a cache hit costs milliseconds.
* An in-memory ``SentenceTransformer`` (e.g. while training) is identified by a hash of its parameters and
  buffers plus its module list and ``max_seq_length``: time O(number of parameters) (~0.2 s for MiniLM).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

from hardbatch.embed.models import resolve_model_path

__all__ = ["model_fingerprint"]

_SMALL_FILE_BYTES = 4 << 20
_SAFETENSORS_MAX_HEADER = 100 << 20


def model_fingerprint(model: Any) -> dict[str, str]:
    """``{"id": ..., "fingerprint": ...}`` of a model path, ``"default"`` or a SentenceTransformer instance.

    Args:
        model: ``"default"``, a model directory, or a loaded ``SentenceTransformer``.

    Returns:
        ``id`` is human-readable (the resolved path, or the instance's class and source), ``fingerprint`` a
        SHA-256 hex digest that changes whenever the weights, configuration or tokenizer change.

    Example:
        >>> info = model_fingerprint("default")
        >>> sorted(info), len(info["fingerprint"])
        (['fingerprint', 'id'], 64)
    """
    if isinstance(model, str | os.PathLike):
        path = resolve_model_path(model).resolve()
        return {"id": str(path), "fingerprint": _directory_fingerprint(path)}
    return {"id": _instance_id(model), "fingerprint": _instance_fingerprint(model)}


def _directory_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        relative = file.name if file == path else file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue  # editor/cache droppings do not change the model
        stat = file.stat()
        digest.update(relative.encode())
        digest.update(stat.st_size.to_bytes(8, "little"))
        if stat.st_size <= _SMALL_FILE_BYTES:
            digest.update(file.read_bytes())
        else:
            digest.update(stat.st_mtime_ns.to_bytes(8, "little"))
            if file.suffix == ".safetensors":
                digest.update(_safetensors_header(file))
    return digest.hexdigest()


def _safetensors_header(file: Path) -> bytes:
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return b""
        (length,) = struct.unpack("<Q", prefix)
        return handle.read(min(length, _SAFETENSORS_MAX_HEADER))


def _instance_id(model: Any) -> str:
    source = getattr(getattr(model, "model_card_data", None), "base_model", None) or getattr(
        model, "_model_name_or_path", None
    )
    name = type(model).__name__
    return f"{name}({source})" if source else f"{name}(in-memory)"


def _instance_fingerprint(model: Any) -> str:
    import torch

    digest = hashlib.sha256()
    digest.update(repr([type(module).__name__ for module in model]).encode())
    digest.update(repr(getattr(model, "max_seq_length", None)).encode())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        digest.update(repr((type(tokenizer).__name__, getattr(tokenizer, "vocab_size", None))).encode())
    with torch.no_grad():
        for name, tensor in list(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            flat = tensor.detach().reshape(-1)
            if flat.dtype == torch.bfloat16:
                flat = flat.view(torch.int16)  # numpy has no bfloat16; the bits are what matter
            digest.update(flat.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
