"""The shared base of every hardbatch batch sampler.

A sampler decides *which examples share a batch*. Every sampler in hardbatch (random, no-duplicates,
topic, source, GCBS, B3) derives from :class:`HardBatchSampler`, which supplies the contract that
distributed training and resumption depend on:

* **Deterministic from (seed, epoch)**: a subclass draws all randomness from :meth:`rng`, never from the
  global RNG, so every rank computes the same batches without communicating.
* **Identical on every rank, full batches only when distributed**: the sampler yields the *global* stream of
  per-device batches; accelerate / our trainer give rank ``r`` batches ``r, r + P, r + 2P, ...``. The number
  of batches is therefore cut to a multiple of ``world_size`` and every batch has exactly ``batch_size``
  indices (a short last batch is kept only with ``drop_last=False`` on a single process).
* **Epochs advance by themselves and via ``set_epoch``**: accelerate does not forward ``set_epoch`` to a
  sharded batch sampler, so finishing an iteration moves to the next epoch; an explicit ``set_epoch(e)``
  always wins.
* **Resumable**: ``state_dict()`` records the epoch and how many batches of it were consumed;
  ``load_state_dict`` makes the next iteration yield exactly the rest of that epoch.

Subclasses implement :meth:`_epoch_batches` (and :meth:`__len__` when they drop examples other than the
tail). The base validates what they return, so a sampler bug surfaces as an error, not as a silent
duplicate or a wrong batch size.

It subclasses sentence-transformers' ``DefaultBatchSampler`` so any hardbatch sampler can be handed to
``SentenceTransformerTrainingArguments(batch_sampler=...)`` (as a class or ``functools.partial``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hardbatch.distributed import world_size as group_world_size
from hardbatch.errors import ConfigError, HardbatchError
from hardbatch.validation import check_batch_size

if TYPE_CHECKING:
    from hardbatch.samplers.inputs import SamplerInputs

try:  # sentence-transformers >= 5.4
    from sentence_transformers.base.sampler import DefaultBatchSampler
except ImportError:  # pragma: no cover - older layouts
    from sentence_transformers.sampler import DefaultBatchSampler

__all__ = ["HardBatchSampler"]


class HardBatchSampler(DefaultBatchSampler):
    """Base class of hardbatch batch samplers: yields lists of dataset indices, one list per batch.

    Args:
        dataset: the dataset to sample from (anything with ``__len__``); may be ``None`` when
            ``num_examples`` is given. sentence-transformers passes it positionally.
        batch_size: examples per (per-device) batch.
        drop_last: drop the short last batch. Always in effect when ``world_size > 1``.
        valid_label_columns: accepted for sentence-transformers compatibility; unused.
        generator: accepted for sentence-transformers compatibility; randomness comes from ``seed``
            so that every rank agrees.
        seed: base seed; epoch ``e`` uses ``np.random.default_rng([seed, e, salt])``.
        num_examples: number of examples when no dataset is given.
        world_size: number of ranks consuming this stream (default: the initialised process group's, else 1).

    Requirements:
        ``batch_size <= num_examples``; subclasses may add constraints (e.g. B3: multiple of the cluster size).
    """

    #: Distinguishes the RNG streams of different sampler classes with the same seed.
    rng_salt: int = 0
    #: With ``drop_last=False`` the left-overs are packed into batches that do not follow the sampler's
    #: scheme (B3's mixed batches); comparisons of batch quality should then drop them.
    mixes_leftovers: bool = False
    #: The sampler batches from a mined :class:`~hardbatch.mining.plan.BatchPlan` (``train --plan``).
    uses_plan: bool = False

    def __init__(
        self,
        dataset: Sequence[Any] | None = None,
        batch_size: int = 32,
        drop_last: bool = True,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        num_examples: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if dataset is None and num_examples is None:
            raise ConfigError("give a dataset or num_examples")
        n = len(dataset) if dataset is not None else int(num_examples)  # type: ignore[arg-type]
        if dataset is not None and num_examples is not None and num_examples != n:
            raise ConfigError(f"num_examples={num_examples} but the dataset has {n} rows")
        check_batch_size(batch_size, n)
        super().__init__(
            dataset if dataset is not None else range(n),
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        #: The dataset given (``None`` when only ``num_examples`` was): samplers that read texts use it.
        self.dataset = dataset
        self.num_examples = n
        self.world_size = int(world_size) if world_size is not None else group_world_size()
        if self.world_size < 1:
            raise ConfigError(f"world_size must be >= 1, got {self.world_size}")
        self._resume_batches = 0
        self._yielded = 0

    # ----------------------------------------------------------------- construction from shared inputs
    @classmethod
    def input_kwargs(cls, inputs: SamplerInputs, options: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor arguments this sampler takes from ``inputs`` (override to declare needs).

        Args:
            inputs: what the caller offers (dataset, plan, teacher embeddings, live model).
            options: the sampler options the caller gives explicitly; an input already given there is not
                taken from ``inputs``.

        Returns:
            Keyword arguments for ``cls(...)``, beyond the shared ones of :meth:`SamplerInputs.base_kwargs`.
        """
        return {}

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword arguments the constructor takes, its own and its bases' (for checks and messages).

        Subclasses pass the shared arguments on with ``*args, **base``; this walks the class hierarchy so
        those count too.
        """
        names: list[str] = []
        skipped = {"self", "dataset", "batch_size"}
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                for parameter in inspect.signature(init).parameters.values():
                    variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
                    if not variadic and parameter.name not in skipped and parameter.name not in names:
                        names.append(parameter.name)
            if klass is HardBatchSampler:
                break
        return names

    @classmethod
    def from_inputs(cls, inputs: SamplerInputs, batch_size: int, **options: Any) -> HardBatchSampler:
        """Build the sampler from shared :class:`~hardbatch.samplers.inputs.SamplerInputs` and its options."""
        kwargs = {**inputs.base_kwargs(), **cls.input_kwargs(inputs, options), **options}
        return cls(inputs.dataset, batch_size=batch_size, **kwargs)

    # ----------------------------------------------------------------- subclass interface
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """Return every batch of ``epoch`` in order, before the world-size cut. Override this."""
        raise NotImplementedError

    def rng(self, epoch: int | None = None) -> np.random.Generator:
        """The RNG for ``epoch`` (default: the current one); the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([int(self.seed), int(epoch), int(self.rng_salt)])

    # ----------------------------------------------------------------- batches
    @property
    def full_batches_only(self) -> bool:
        return self.drop_last or self.world_size > 1

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` exactly as iteration yields them (validated, cut to the world size)."""
        epoch = self.epoch if epoch is None else epoch
        batches = [list(map(int, batch)) for batch in self._epoch_batches(epoch)]
        return self._finalise(batches, epoch)

    def _finalise(self, batches: list[list[int]], epoch: int) -> list[list[int]]:
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) != self.batch_size]
        if any(len(b) > self.batch_size or len(b) == 0 for b in short):
            sizes = sorted({len(b) for b in short})
            raise HardbatchError(
                f"{type(self).__name__} produced batches of sizes {sizes} (batch_size={self.batch_size})"
            )
        if len(short) > 1 or (short and batches[-1] is not short[0]):
            raise HardbatchError(f"{type(self).__name__}: only the last batch may be short")
        flat = np.fromiter((i for b in batches for i in b), dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_examples):
            raise HardbatchError(f"{type(self).__name__} produced an index outside [0, {self.num_examples})")
        if np.unique(flat).size != flat.size:
            raise HardbatchError(f"{type(self).__name__} repeated an index within epoch {epoch}")
        if self.full_batches_only:
            keep = len(full) - len(full) % self.world_size
            return full[:keep]
        return batches

    # ----------------------------------------------------------------- iteration protocol
    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        batches = self.batches(epoch)
        start, self._resume_batches = self._resume_batches, 0
        if start > len(batches):
            raise HardbatchError(
                f"cannot resume at batch {start}: epoch {epoch} has only {len(batches)} batches"
            )
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch
        # Only a completed epoch advances; an abandoned iterator leaves the epoch as it was.
        if self.epoch == epoch:
            self.epoch = epoch + 1
            self._yielded = 0

    def __len__(self) -> int:
        n_batches = self.num_examples // self.batch_size
        if not self.full_batches_only:
            return math.ceil(self.num_examples / self.batch_size)
        return n_batches - n_batches % self.world_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_batches = 0
            self._yielded = 0
        self.epoch = int(epoch)

    # ----------------------------------------------------------------- resumption
    def state_dict(self) -> dict[str, Any]:
        """Epoch and number of batches of it already yielded.

        A trainer that prefetches should overwrite ``batches_done`` with the number of batches it actually
        trained on before saving.
        """
        return {
            "sampler": type(self).__name__,
            "epoch": int(self.epoch),
            "batches_done": int(self._yielded),
            "seed": int(self.seed),
            "batch_size": int(self.batch_size),
            "num_examples": int(self.num_examples),
            "world_size": int(self.world_size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "batch_size", "num_examples", "world_size"):
            if key in state and int(state[key]) != int(getattr(self, key)):
                raise ConfigError(
                    f"cannot resume {type(self).__name__}: saved {key}={state[key]} but this sampler has "
                    f"{key}={getattr(self, key)}"
                )
        self.epoch = int(state["epoch"])
        self._resume_batches = int(state.get("batches_done", 0))
        self._yielded = self._resume_batches

    def get_config_dict(self) -> dict[str, Any]:
        """Parameters worth recording in a run's metadata / model card."""
        return self._attributes("batch_size", "drop_last", "seed", "world_size")

    def _attributes(self, *names: str) -> dict[str, Any]:
        """``{name: self.name}`` for a config dict; subclasses extend the base's with their own names."""
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config_dict().items())
        return f"{type(self).__name__}({params})"
