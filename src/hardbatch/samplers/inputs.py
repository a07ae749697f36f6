"""What a sampler may need before it can run, gathered once by the caller.

Callers (the trainer, ``hardbatch inspect``, the experiment grid, the demo, the sentence-transformers
factory) do not know which sampler needs what. They describe what they *have* in one
:class:`SamplerInputs` — the dataset, a batch plan, teacher embeddings (or a way to compute them), the model
being trained — and :func:`hardbatch.samplers.build_sampler` hands it to the sampler class, whose
:meth:`~hardbatch.samplers.base.HardBatchSampler.input_kwargs` picks what it declares it needs. Teacher
embeddings are computed lazily, only when a sampler asks for them, and at most once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SamplerInputs", "TeacherArrays"]

#: ``(query_emb (N, d), positive_emb (N, d))`` float arrays of a teacher, or a zero-argument callable
#: returning them (called at most once, on first use).
TeacherArrays = tuple[Any, Any] | Callable[[], tuple[Any, Any]]


@dataclass
class SamplerInputs:
    """Everything a caller can offer a sampler; each sampler takes the parts it declares.

    Args:
        dataset: the training dataset (PairDataset, ``datasets.Dataset``, sequence of dicts) or ``None``
            when only the number of examples matters (give ``num_examples``).
        num_examples: N when no dataset is given.
        seed: the sampler seed (epoch ``e`` draws from ``(seed, e)``).
        world_size: ranks consuming the stream (None: the initialised process group's, else 1).
        drop_last: leave out the short last batch; None: the sampler's own default.
        plan: a :class:`~hardbatch.mining.plan.BatchPlan`, the path of a saved one, or a zero-argument
            callable returning either (mined on first use) (B3).
        teacher: teacher embeddings as :data:`TeacherArrays` (topic, GCBS with a fixed teacher, B3 without
            a plan).
        teacher_is_explicit: ``teacher`` is a teacher the user chose, as opposed to a frozen copy of the
            starting model offered as a default. Samplers that refresh with the live model (GCBS, as in the
            paper) prefer the live model over a default teacher.
        model: the model being trained, for samplers that re-embed before every epoch.
        embed_batch_size: texts per forward pass when a sampler embeds with ``model``.
        device: where a sampler that embeds or mines should compute.
    """

    dataset: Any = None
    num_examples: int | None = None
    seed: int = 0
    world_size: int | None = None
    drop_last: bool | None = None
    plan: Any = None
    teacher: TeacherArrays | None = None
    teacher_is_explicit: bool = True
    model: Any = None
    embed_batch_size: int = 64
    device: str | None = "auto"
    _teacher_cache: tuple[Any, Any] | None = field(default=None, init=False, repr=False)

    def batch_plan(self) -> Any:
        """The plan (resolving a lazy one once), or ``None`` when none was offered."""
        if callable(self.plan):
            self.plan = self.plan()
        return self.plan

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def teacher_embeddings(self) -> tuple[Any, Any]:
        """``(query_emb, positive_emb)`` of the teacher, computed on first call.

        Raises:
            ConfigError: no teacher was offered.
        """
        if self._teacher_cache is None:
            if self.teacher is None:
                from hardbatch.errors import ConfigError

                raise ConfigError("this sampler needs teacher embeddings (query and positive) or a plan")
            value = self.teacher() if callable(self.teacher) else self.teacher
            query, positive = (value.query, value.positive) if hasattr(value, "query") else value
            self._teacher_cache = (query, positive)
        return self._teacher_cache

    def base_kwargs(self) -> dict[str, Any]:
        """The constructor arguments every sampler shares (seed, world size, drop_last, N)."""
        kwargs: dict[str, Any] = {"seed": self.seed}
        if self.world_size is not None:
            kwargs["world_size"] = self.world_size
        if self.drop_last is not None:
            kwargs["drop_last"] = self.drop_last
        if self.dataset is None and self.num_examples is not None:
            kwargs["num_examples"] = self.num_examples
        return kwargs
