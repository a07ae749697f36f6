"""``TrainConfig``: every knob of a hardbatch training run, in one serialisable dataclass."""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from hardbatch.errors import ConfigError

__all__ = [
    "NONFINITE_ACTIONS",
    "PRECISIONS",
    "TrainConfig",
    "check_sampler_options",
    "field_help",
    "training_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")


def training_precision(precision: str, device: Any) -> str:
    """``"fp32"`` or ``"bf16"`` (autocast): what ``precision`` trains in on ``device``.

    ``"auto"`` follows :func:`hardbatch.device.fast_bf16_matmul`: on a CPU with fast bf16 (Zen 4) a MiniLM
    step took 0.51× the fp32 time and codesearch nDCG@10 moved by at most 0.0012 over 2 seeds × 2 samplers
    (docs/losses.md).

    Example:
        >>> training_precision("fp32", "cpu")
        'fp32'
    """
    if precision != "auto":
        return precision
    from hardbatch.device import fast_bf16_matmul

    return "bf16" if fast_bf16_matmul(device) else "fp32"


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
            memory depends on the chunk, not the batch size; the loss and gradients are unchanged (works
            through both towers of an image–text model).
        freeze_tower: ``"text"`` or ``"image"`` freezes that tower of an image–text model (LiT-style:
            e.g. train an image tower against a frozen text tower); None trains everything.
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
        precision: ``"auto"`` (bf16 autocast where bf16 matmul is fast: CUDA with bf16, CPUs with AMX or
            AMD's ``avx512_bf16``, see :func:`hardbatch.device.fast_bf16_matmul`; fp32 elsewhere), ``"fp32"``
            or ``"bf16"``.
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
        preset: ``"b3-paper"`` or ``"b3pp-paper"``: the B3 paper's recipe (sampler b3, temperature 0.02,
            K=32, p=30, m=100, global batch 1024, h=5 for B3++) for every setting left at its default;
            see :mod:`hardbatch.mining.presets`.
        query_prompt: instruction prompt prepended to every query in training and evaluation, stored on the
            model as ``prompts["query"]`` (so the saved model and a teacher built from it use it too);
            ``None``: the model's own (sentence-transformers' ``prompts`` convention), ``""``: none.
        document_prompt: the same for documents (positives and negatives), ``prompts["document"]``.
        remine_every: re-mine the B3 plan with the student every this many epochs: at the start of epochs
            E, 2E, ... the training pairs are re-embedded with the model being trained and the plan is
            re-mined with the same mining options (samplers with a plan: b3, b3pp, random-hn); ``None``:
            the plan stays fixed.
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
    freeze_tower: str | None = None
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
    preset: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    remine_every: int | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            from dataclasses import fields

            from hardbatch.mining.presets import apply_train_preset

            apply_train_preset(self, {f.name: f.default for f in fields(self)})
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
            "remine_every": self.remine_every,
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
        if self.freeze_tower not in (None, "text", "image"):
            raise ConfigError(f"freeze_tower must be 'text', 'image' or None, got {self.freeze_tower!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.sampler_options, dict):
            raise ConfigError(f"sampler_options must be a mapping, got {type(self.sampler_options).__name__}")
        # The trainer passes these itself; given again they would be a TypeError deep in build_sampler.
        for key, where in {"seed": "--seed", "world_size": "the number of processes (torchrun)"}.items():
            if key in self.sampler_options:
                raise ConfigError(f"--sampler-option {key}: not a sampler option here; it is set by {where}")
        if self.sampler_options:  # only then: SAMPLERS["b3"] imports the B3 module
            check_sampler_options(self.sampler, self.sampler_options)
        if self.remine_every is not None:
            if "remine_every" in self.sampler_options:
                raise ConfigError("give remine_every once: as --remine-every, not also as a sampler option")
            if "remine_every" not in SAMPLERS[self.sampler].option_names():
                takers = ", ".join(n for n in SAMPLERS if "remine_every" in SAMPLERS[n].option_names())
                raise ConfigError(
                    f"--remine-every re-mines a batch plan: --sampler {takers} only (got --sampler {self.sampler})"
                )
        if self.plan is not None:
            from hardbatch.samplers import SAMPLERS

            if self.sampler in SAMPLERS and not SAMPLERS[self.sampler].uses_plan:
                takers = ", ".join(name for name in SAMPLERS if SAMPLERS[name].uses_plan)
                raise ConfigError(
                    f"--plan is read by --sampler {takers} only (got --sampler {self.sampler}); a plan from "
                    "`hardbatch mine gcbs` or `mine b3` trains with --sampler b3 --plan PLAN"
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a JSON-like mapping (a ``--config`` file, or a run's ``config.json``).

        Values are checked against the field types, so a wrong type names the file and the field.

        Args:
            values: field name → value; unknown names are an error.
            source: where the values come from, for messages (e.g. the file path).

        Raises:
            ConfigError: unknown field, a value of the wrong type, or a missing ``data``/``output_dir``.

        Example:
            >>> TrainConfig.from_dict({"data": "pairs.jsonl", "output_dir": "runs/a", "lr": 1e-4}).lr
            0.0001
        """
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source}: expected a JSON object of TrainConfig fields, got {type(values).__name__}"
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
            )
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if not _matches(value, hints[name]):
                raise ConfigError(
                    f"{source}: field {name!r} must be {_type_name(hints[name])}, got {value!r}"
                )
        missing = [f.name for f in known.values() if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in missing if values.get(name) is None]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {', '.join(missing)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (datasets and model objects are replaced by a description)."""
        out = asdict(self)
        for key in ("data", "eval_data", "model", "teacher"):
            out[key] = describe(getattr(self, key))
        out["sampler_options"] = {k: describe(v) for k, v in self.sampler_options.items()}
        return out


def field_help() -> dict[str, str]:
    """Field name → its one-paragraph description from the ``Args:`` section of :class:`TrainConfig`.

    The CLI builds ``hardbatch train``'s option help from this, so every option is documented once.

    Example:
        >>> field_help()["lr"]
        'peak learning rate of AdamW.'
    """
    doc = inspect.getdoc(TrainConfig) or ""
    args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            name = match.group(1)
            out[name] = match.group(2).strip()
        elif name is not None and line.startswith("        "):
            out[name] += " " + line.strip()
        elif line.strip():
            break
    return out


def check_sampler_options(name: str, options: dict[str, Any], option: str = "--sampler-option") -> None:
    """:func:`hardbatch.samplers.check_sampler_options`, worded for the CLI's ``--sampler-option``."""
    from hardbatch.samplers import check_sampler_options as check

    check(name, options, option)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field annotation (int for float is fine; bool is not an int)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    base = origin or hint
    return isinstance(base, type) and isinstance(value, base)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


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
