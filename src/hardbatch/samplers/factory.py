"""Samplers for sentence-transformers' trainer: ``batch_sampler=sampler_factory(name, ...)``.

sentence-transformers (>= 5) builds its batch sampler itself, as ``batch_sampler(dataset, batch_size=...,
drop_last=..., valid_label_columns=..., generator=..., seed=...)``. :func:`sampler_factory` binds what
hardbatch's sampler needs beyond that (a plan, a teacher, the model being trained, options) and builds the
sampler through :func:`hardbatch.samplers.build_sampler` from one
:class:`~hardbatch.samplers.inputs.SamplerInputs`, exactly as hardbatch's own trainer does.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hardbatch.samplers.inputs import SamplerInputs

__all__ = ["SamplerFactory", "sampler_factory"]


class SamplerFactory:
    """A callable with sentence-transformers' batch-sampler signature that builds a hardbatch sampler.

    Args:
        name: a registered sampler name (see :data:`hardbatch.samplers.SAMPLERS`).
        plan: a batch plan or its path (B3).
        teacher: a model (``"default"``, a path or a ``SentenceTransformer``) whose embeddings of the
            training pairs samplers may ask for (topic, B3 without a plan, GCBS with a fixed teacher);
            encoded once, on first use, with :func:`hardbatch.embed.encode_texts`.
        model: the model being trained, for samplers that refresh with it (GCBS).
        embed_batch_size: texts per forward pass when embedding.
        device: where to embed and mine.
        options: the sampler's own keyword arguments.
    """

    def __init__(
        self,
        name: str,
        *,
        plan: Any = None,
        teacher: Any = None,
        model: Any = None,
        embed_batch_size: int = 64,
        device: str | None = "auto",
        **options: Any,
    ) -> None:
        from hardbatch.errors import ConfigError
        from hardbatch.samplers import SAMPLERS

        if name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        self.name = name
        self.plan = plan
        self.teacher = teacher
        self.model = model
        self.embed_batch_size = int(embed_batch_size)
        self.device = device
        self.options = options

    def __call__(
        self,
        dataset: Any,
        batch_size: int = 32,
        drop_last: bool = True,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> Any:
        from hardbatch.samplers import build_sampler

        inputs = SamplerInputs(
            dataset=dataset,
            seed=seed,
            drop_last=drop_last,
            plan=self.plan,
            teacher=self._teacher_arrays(dataset) if self.teacher is not None else None,
            model=self.model,
            embed_batch_size=self.embed_batch_size,
            device=self.device,
        )
        options = dict(self.options)
        if valid_label_columns is not None:
            options.setdefault("valid_label_columns", valid_label_columns)
        return build_sampler(self.name, inputs, batch_size, **options)

    def _teacher_arrays(self, dataset: Any):
        teacher, batch_size, device = self.teacher, self.embed_batch_size, self.device

        def encode() -> tuple[Any, Any]:
            from hardbatch.embed import encode_texts
            from hardbatch.samplers._data import query_positive_texts

            queries, positives = query_positive_texts(dataset)
            options = {"batch_size": batch_size, "device": device}
            return encode_texts(queries, teacher, **options), encode_texts(positives, teacher, **options)

        return encode

    def __repr__(self) -> str:
        bound = {"plan": self.plan, "teacher": self.teacher, **self.options}
        shown = ", ".join(f"{k}={v!r}" for k, v in bound.items() if v is not None and not _is_array(v))
        return f"sampler_factory({self.name!r}{', ' if shown else ''}{shown})"


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and not isinstance(value, str | os.PathLike)


def sampler_factory(name: str, **kwargs: Any) -> SamplerFactory:
    """``batch_sampler=`` for ``SentenceTransformerTrainingArguments``: the hardbatch sampler ``name``.

    Args:
        name: a registered sampler (random, nodup, topic, source, gcbs, b3).
        **kwargs: ``plan``, ``teacher``, ``model``, ``embed_batch_size``, ``device`` (see
            :class:`SamplerFactory`) and the sampler's own options.

    Example:
        >>> make = sampler_factory("random")
        >>> sampler = make(list(range(10)), batch_size=4, drop_last=True, valid_label_columns=None,
        ...                generator=None, seed=0)
        >>> type(sampler).__name__, len(sampler)
        ('RandomBatchSampler', 2)
    """
    return SamplerFactory(name, **kwargs)
