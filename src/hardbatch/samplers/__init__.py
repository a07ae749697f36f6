"""Batch samplers: which examples share a batch.

Every sampler derives from :class:`~hardbatch.samplers.base.HardBatchSampler`: deterministic from
(seed, epoch), identical on every rank, full batches only when distributed, self-advancing epochs,
``state_dict`` / ``load_state_dict``, and usable as ``batch_sampler=`` in a torch ``DataLoader`` or in
sentence-transformers (>= 5) through :func:`sampler_factory`::

    from hardbatch.samplers import sampler_factory
    args = SentenceTransformerTrainingArguments(
        ..., batch_sampler=sampler_factory("topic", teacher="default")
    )

Every caller builds samplers the same way: it describes what it has in one :class:`SamplerInputs` (dataset,
plan, teacher embeddings, the live model) and calls :func:`build_sampler`; each sampler class declares what
it takes from those inputs in :meth:`HardBatchSampler.input_kwargs`. A new sampler is one file plus one
entry in :data:`SAMPLERS` (see ``docs/samplers.md``, "Writing a sampler").

Registry: :data:`SAMPLERS` maps a name to its class and :func:`build_sampler` instantiates one by name:

========  ==========================================================================
random    :class:`RandomBatchSampler` — uniformly random batches
nodup     :class:`NoDuplicatesBatchSampler` — random, no text repeated within a batch
topic     :class:`TopicBatchSampler` — each batch from one k-means topic (TAS-B)
source    :class:`SourceBatchSampler` — each batch from one data source
gcbs      :class:`GCBSBatchSampler` — GCBS: RCM order of the thresholded similarity graph
b3        ``B3BatchSampler`` — B3: whole clusters of mutual hard negatives (loaded lazily)
random-hn ``RandomHardNegativeBatchSampler`` — random batches + h negatives per query from
          the B3 rank window (the paper's ablation baseline; loaded lazily)
========  ==========================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from hardbatch._lazy import import_attribute, lazy_getattr
from hardbatch.errors import ConfigError
from hardbatch.samplers.base import HardBatchSampler
from hardbatch.samplers.factory import SamplerFactory, sampler_factory
from hardbatch.samplers.gcbs import GCBSBatchSampler, model_embed_fn
from hardbatch.samplers.inputs import SamplerInputs
from hardbatch.samplers.nodup import NoDuplicatesBatchSampler
from hardbatch.samplers.random import RandomBatchSampler
from hardbatch.samplers.source import SourceBatchSampler
from hardbatch.samplers.topic import TopicBatchSampler

__all__ = [
    "SAMPLERS",
    "B3BatchSampler",
    "GCBSBatchSampler",
    "HardBatchSampler",
    "HardbatchSamplerCallback",
    "NoDuplicatesBatchSampler",
    "RandomBatchSampler",
    "RandomHardNegativeBatchSampler",
    "SamplerFactory",
    "SamplerInputs",
    "SourceBatchSampler",
    "TopicBatchSampler",
    "build_sampler",
    "check_sampler_options",
    "model_embed_fn",
    "resolve_inputs",
    "sampler_factory",
]


class _SamplerRegistry(Mapping[str, type]):
    """Name → sampler class; entries given as ``"module:attribute"`` strings are imported on first access.

    Lazy entries keep ``import hardbatch.samplers`` light and independent of optional modules (B3 pulls in
    the graph partitioner).
    """

    def __init__(self, entries: dict[str, type | str]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type:
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_attribute(entry)
            self._entries[name] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SAMPLERS({', '.join(self._entries)})"

    def register(self, name: str, entry: type | str) -> None:
        """Add a sampler from outside hardbatch: a class or a ``"module:Class"`` string (imported lazily).

        Raises:
            ConfigError: ``name`` is taken.
        """
        if name in self._entries:
            raise ConfigError(f"a sampler named {name!r} is already registered")
        self._entries[name] = entry


SAMPLERS: _SamplerRegistry = _SamplerRegistry(
    {
        "random": RandomBatchSampler,
        "nodup": NoDuplicatesBatchSampler,
        "topic": TopicBatchSampler,
        "source": SourceBatchSampler,
        "gcbs": GCBSBatchSampler,
        "b3": "hardbatch.samplers.b3:B3BatchSampler",
        "random-hn": "hardbatch.samplers.random_hn:RandomHardNegativeBatchSampler",
    }
)


def build_sampler(
    name: str, inputs: SamplerInputs | Any, batch_size: int, **options: Any
) -> HardBatchSampler:
    """Instantiate the sampler registered as ``name`` from shared inputs and its own options.

    Args:
        name: one of :data:`SAMPLERS` (random, nodup, topic, source, gcbs, b3).
        inputs: a :class:`SamplerInputs` (what the caller has: dataset, plan, teacher embeddings, live
            model), or just the training dataset (``None`` with ``num_examples=`` for samplers that only
            need N).
        batch_size: examples per (per-device) batch.
        **options: the sampler's own keyword arguments (``target_degree``, ``same_source``, ...); they
            override anything taken from ``inputs``.

    Raises:
        ConfigError: unknown sampler name, an option the sampler does not take, or an input the sampler
            needs is missing.

    Example:
        >>> sampler = build_sampler("random", None, 4, num_examples=10, seed=0)
        >>> type(sampler).__name__, len(sampler)
        ('RandomBatchSampler', 2)
        >>> import numpy as np
        >>> emb = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
        >>> inputs = SamplerInputs(num_examples=64, teacher=(emb, emb))
        >>> type(build_sampler("topic", inputs, 8, n_clusters=2)).__name__
        'TopicBatchSampler'
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    check_sampler_options(name, options)
    if not isinstance(inputs, SamplerInputs):
        inputs = SamplerInputs(dataset=inputs)
    return SAMPLERS[name].from_inputs(inputs, batch_size, **options)


def check_sampler_options(name: str, options: dict[str, Any], option: str = "option") -> None:
    """Unknown sampler keyword arguments are a user error naming the accepted ones (not a TypeError).

    Args:
        name: a registered sampler name.
        options: keyword arguments meant for its constructor.
        option: how the user gave them, for the message (``option``, ``--sampler-option``, ``--option gcbs.``).

    Raises:
        ConfigError: a key the sampler's constructor does not take.

    Example:
        >>> check_sampler_options("gcbs", {"target_degree": 8})
        >>> check_sampler_options("random", {"target_degree": 8})
        Traceback (most recent call last):
        ...
        hardbatch.errors.ConfigError: option target_degree: not an option of sampler 'random'; ...
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    if hasattr(cls, "option_names"):
        accepted = cls.option_names()
    else:  # a registered class outside the HardBatchSampler family
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        accepted = [p for p in parameters if p not in ("self", "dataset", "batch_size")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{option}{'' if option.endswith('.') else ' '}{', '.join(unknown)}: not an option of sampler {name!r}; "
            f"it accepts {', '.join(accepted)}"
        )


def resolve_inputs(name: str, inputs: SamplerInputs, **options: Any) -> dict[str, Any]:
    """The keyword arguments sampler ``name`` would take from ``inputs``, merged with ``options``.

    For callers that prepare inputs once and hand them on as plain sampler options (e.g. to
    :class:`hardbatch.train.TrainConfig` ``sampler_options``), so nothing is computed twice.

    Example:
        >>> resolve_inputs("random", SamplerInputs(plan="plan.parquet"))
        {}
        >>> resolve_inputs("b3", SamplerInputs(plan="plan.parquet"), same_source=False)
        {'plan': 'plan.parquet', 'same_source': False}
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return {**SAMPLERS[name].input_kwargs(inputs, options), **options}


# Imported on first use: B3 pulls in the graph partitioner, the callback transformers' trainer.
__getattr__ = lazy_getattr(
    __name__,
    {
        "B3BatchSampler": "hardbatch.samplers.b3",
        "RandomHardNegativeBatchSampler": "hardbatch.samplers.random_hn",
        "HardbatchSamplerCallback": "hardbatch.samplers.st_callback",
    },
)
