"""``TrainConfig``: every knob of a hardbatch training run, in one serialisable dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hardbatch.errors import ConfigError

__all__ = ["NONFINITE_ACTIONS", "PRECISIONS", "TrainConfig"]

PRECISIONS = ("auto", "fp32", "bf16")
NONFINITE_ACTIONS = ("stop", "skip")


@dataclass
class TrainConfig:
    """Configuration of :class:`hardbatch.train.Trainer` (and of ``hardbatch train``).

    Args:
        data: training pairs: a spec for :func:`hardbatch.data.load_pairs` (path, ``"codesearch:train"``) or
            a ``PairDataset``.
        output_dir: run folder (metrics.jsonl, checkpoints/, final/, report.md, curves.png).
        model: ``"default"`` (packaged all-MiniLM-L6-v2), a local model folder, or a SentenceTransformer
            object (trained in place).
        sampler: batch sampler name from :data:`hardbatch.samplers.SAMPLERS` (random, nodup, topic, source,
            gcbs, b3).
        batch_size: pairs per device and step; the global batch is ``batch_size * world_size``.
        plan: B3 batch plan (``hardbatch mine b3`` output) for ``sampler="b3"``.
        sampler_options: extra keyword arguments for the sampler (e.g. ``{"embeddings": ...}``).
        teacher: model that embeds the training pairs for samplers that need embeddings (topic, gcbs, b3
            without a plan) when ``sampler_options`` gives none; default: the starting model (GCBS without
            a teacher re-embeds with the model being trained before every epoch).
        gradcache_chunk: if set, embed the batch in chunks of this many texts with gradient caching, so
            memory depends on the chunk, not the batch size; the loss and gradients are unchanged.
        epochs: passes over the sampler's batches.
        max_steps: stop after this many optimiser steps (the schedule is sized for it).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of steps of linear warm-up; then linear decay.
        max_grad_norm: gradient clipping norm (``None`` disables clipping).
        max_seq_length: truncate texts to this many tokens (``None``: the model's own limit).
        seed: seed of the sampler, dropout and every other random choice.
        scale: inverse temperature of the InfoNCE loss (20 = temperature 0.05).
        symmetric: also contrast each positive against all queries (CLIP-style two-way loss).
        num_negatives: hard negatives per query taken from the data (``None``: all that every row has;
            ``0``: none).
        mask_duplicates: mask in-batch documents whose text equals a query's positive (false negatives).
        eval_data: evaluation pairs (spec or ``PairDataset``); ``"auto"`` picks the dev split of a
            ``codesearch:`` train spec and nothing otherwise; ``None`` disables evaluation.
        eval_every: also evaluate every this many steps (evaluation always runs at each epoch end).
        eval_batch_size: texts per forward pass when embedding for evaluation.
        max_train_pairs: train on a fixed random subset (seeded independently of ``seed``) of this size.
        max_eval_pairs: evaluate on a fixed random subset of this size.
        subset_seed: seed of those subsets (kept separate so all training seeds see the same data).
        save_every: write a checkpoint every this many steps (always at epoch ends and at the end).
        keep_checkpoints: how many checkpoints to keep.
        log_every: write a training record every this many steps.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
        on_nonfinite: what a non-finite loss or gradient norm does: ``"stop"`` (raise
            :class:`~hardbatch.errors.TrainingDivergedError` before the update is applied) or ``"skip"``
            (drop that update, count it in ``result.json``'s ``skipped_steps``). Non-finite weights are
            never saved either way.
        progress: show a progress bar per epoch (``None``: unless ``HARDBATCH_PROGRESS=0``).
        resume: continue from the newest checkpoint in ``output_dir``; on a finished run with the same
            settings there is nothing to do (its result is returned), with other settings a
            :class:`ConfigError`.
        overwrite: start a new run in ``output_dir`` even if it holds a run or other files (only
            hardbatch's own outputs are replaced; other files are kept).
        write_report: write ``report.md`` and ``curves.png`` at the end.
        save_final: save the trained model to ``output_dir/final``.
    """

    data: Any
    output_dir: str
    model: Any = "default"
    sampler: str = "random"
    batch_size: int = 64
    plan: str | None = None
    sampler_options: dict[str, Any] = field(default_factory=dict)
    teacher: Any = None
    gradcache_chunk: int | None = None
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    max_seq_length: int | None = 128
    seed: int = 0
    scale: float = 20.0
    symmetric: bool = False
    num_negatives: int | None = None
    mask_duplicates: bool = True
    eval_data: Any = "auto"
    eval_every: int | None = None
    eval_batch_size: int = 64
    max_train_pairs: int | None = None
    max_eval_pairs: int | None = None
    subset_seed: int = 0
    save_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 10
    device: str = "auto"
    precision: str = "auto"
    on_nonfinite: str = "stop"
    progress: bool | None = None
    resume: bool = False
    overwrite: bool = False
    write_report: bool = True
    save_final: bool = True

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every,
            "eval_batch_size": self.eval_batch_size,
        }
        optional_positive = {
            "max_steps": self.max_steps,
            "gradcache_chunk": self.gradcache_chunk,
            "eval_every": self.eval_every,
            "save_every": self.save_every,
            "max_train_pairs": self.max_train_pairs,
            "max_eval_pairs": self.max_eval_pairs,
            "max_seq_length": self.max_seq_length,
        }
        for name, value in {
            **positive,
            **{k: v for k, v in optional_positive.items() if v is not None},
        }.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if self.num_negatives is not None and self.num_negatives < 0:
            raise ConfigError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        from hardbatch.samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise ConfigError(f"on_nonfinite must be one of {NONFINITE_ACTIONS}, got {self.on_nonfinite!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (datasets and model objects are replaced by a description)."""
        out = asdict(self)
        for key in ("data", "eval_data", "model", "teacher"):
            out[key] = describe(getattr(self, key))
        out["sampler_options"] = {k: describe(v) for k, v in self.sampler_options.items()}
        return out


def describe(value: Any) -> Any:
    """A short JSON-friendly description of a config value (objects become ``<Type name>``).

    Containers are described element by element, so two different ``sampler_options`` dicts never
    describe alike (resume compares these descriptions).
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    name = getattr(value, "name", None)
    fingerprint = getattr(value, "fingerprint", None)
    if isinstance(fingerprint, str):
        return f"<{type(value).__name__} {name} {fingerprint[:12]}>"
    shape = getattr(value, "shape", None)
    if shape is not None:
        digest = _array_digest(value)
        if digest is None:
            return f"<{type(value).__name__} shape={tuple(shape)}>"
        return f"<{type(value).__name__} shape={tuple(shape)} {digest[:12]}>"
    if hasattr(value, "__fspath__"):
        return str(value)
    return f"<{type(value).__name__}>"


_DIGESTS: dict[int, tuple[Any, str]] = {}


def _array_digest(value: Any) -> str | None:
    """Content hash of an array or tensor, computed once per object (O(N · d) the first time): the config
    is described at every checkpoint, and re-reading a memory-mapped embedding file each time would cost."""
    import contextlib
    import weakref

    import numpy as np

    from hardbatch.io import hash_array

    cached = _DIGESTS.get(id(value))
    if cached is not None and cached[0]() is value:
        return cached[1]
    try:
        digest = hash_array(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value))
    except (TypeError, ValueError):
        return None
    with contextlib.suppress(TypeError):  # not weak-referenceable: hashed again next time
        _DIGESTS[id(value)] = (weakref.ref(value), digest)
    return digest
