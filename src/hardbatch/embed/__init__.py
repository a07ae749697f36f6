"""Teacher/student embeddings: encode texts (and images, with an image–text model) with any
sentence-transformers model, cached and validated."""

from __future__ import annotations

from hardbatch.embed.cache import load_embeddings, sidecar_path
from hardbatch.embed.clip import freeze_tower, load_clip, make_tiny_clip
from hardbatch.embed.encode import encode_texts
from hardbatch.embed.fingerprint import model_fingerprint
from hardbatch.embed.models import DEFAULT_MODEL, load_model, make_tiny_model, resolve_model_path
from hardbatch.embed.pairs import PairEmbeddings, embed_pairs

__all__ = [
    "DEFAULT_MODEL",
    "PairEmbeddings",
    "embed_pairs",
    "encode_texts",
    "freeze_tower",
    "load_clip",
    "load_embeddings",
    "load_model",
    "make_tiny_clip",
    "make_tiny_model",
    "model_fingerprint",
    "resolve_model_path",
    "sidecar_path",
]
