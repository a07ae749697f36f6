"""Teacher/student embeddings: encode texts with any sentence-transformers model, cached and validated."""

from __future__ import annotations

from hardbatch.embed.cache import load_embeddings, sidecar_path
from hardbatch.embed.encode import encode_texts
from hardbatch.embed.fingerprint import model_fingerprint
from hardbatch.embed.models import DEFAULT_MODEL, load_model, make_tiny_model, resolve_model_path
from hardbatch.embed.pairs import PairEmbeddings, embed_pairs

__all__ = [
    "DEFAULT_MODEL",
    "PairEmbeddings",
    "embed_pairs",
    "encode_texts",
    "load_embeddings",
    "load_model",
    "make_tiny_model",
    "model_fingerprint",
    "resolve_model_path",
    "sidecar_path",
]
