"""The hardbatch training loop: a plain PyTorch loop around a SentenceTransformer.

One optimiser step on ``P`` data-parallel ranks:

1. the sampler yields the global stream of per-device batches; rank ``r`` takes batches
   ``r, r + P, r + 2P, ...`` (every rank computes the same stream, nothing is communicated);
2. the rank tokenises its ``b`` pairs (plus hard negatives from the data, or B3++ negatives mined for the
   batch) and embeds queries and documents, optionally in chunks with gradient caching;
3. the InfoNCE loss contrasts every query with the documents of *all* ranks (``info_nce(group=...)``);
4. DDP averages gradients; AdamW steps; the warm-up/linear-decay schedule steps.

Rank 0 evaluates (each epoch end and every ``eval_every`` steps), logs ``metrics.jsonl``, writes atomic
checkpoints and, at the end, ``final/`` (sentence-transformers format), ``report.md`` and ``curves.png``.

Resumption is exact: a checkpoint stores the model, optimiser, scheduler, the sampler position (epoch and
batches actually trained), every rank's RNG states and the logging accumulators, so a run killed with
``kill -9`` and resumed with ``resume=True`` ends with the same weights and metrics as an uninterrupted
run with the same seed (on the same hardware and world size).

Cost per step: the model's forward/backward over ``b * (2 + h)`` texts (gradient caching adds one extra
forward without gradients) plus the loss, O(b · n · d) time with n = global documents, O((b + n) · d) memory
in the tiled loss. Memory of activations is O(b) without gradient caching and O(chunk) with it.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError
from hardbatch.io import read_json, write_json
from hardbatch.losses.module import clamp_logit_scales
from hardbatch.train.checkpoint import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_trainer_state,
    replace_dir_atomically,
    restore_rng_state,
    save_checkpoint,
)
from hardbatch.train.collate import PairCollator, TokenizedPairs
from hardbatch.train.config import TrainConfig
from hardbatch.train.distributed import DistContext, init_distributed
from hardbatch.train.metrics_log import MetricsLog
from hardbatch.train.schedule import warmup_linear_schedule, warmup_steps_for
from hardbatch.train.step import DualEncoder, StepRunner

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainerState", "train"]

_STATE_FORMAT = 1
# Settings that must not change between an interrupted run and its resumption.
_RESUME_KEYS = (
    "sampler",
    "batch_size",
    "seed",
    "lr",
    "epochs",
    "max_steps",
    "warmup_ratio",
    "gradcache_chunk",
    "scale",
    "symmetric",
    "max_train_pairs",
    "subset_seed",
    "max_seq_length",
)


_EMBEDDING_SAMPLERS = ("topic", "gcbs", "b3")


@dataclass
class TrainerState:
    """Progress counters, passed to callbacks after every optimiser step.

    Attributes:
        step: optimiser steps completed.
        epoch: current epoch (0-based).
        batch_in_epoch: steps completed within ``epoch``.
        last_loss: loss of the last step (mean over ranks).
        seconds: training wall time so far (summed over resumptions).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    last_loss: float = float("nan")
    last_lr: float = 0.0
    seconds: float = 0.0
    window_loss: float = 0.0
    window_steps: int = 0


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        output_dir: the run folder.
        final_model: path of the saved model (``None`` when ``save_final=False``).
        metrics: the last evaluation's metrics (empty without evaluation data).
        steps: optimiser steps trained.
        seconds: training wall time (without evaluation).
        examples: training pairs used.
        summary: everything written to ``result.json``.
    """

    output_dir: Path
    final_model: Path | None
    metrics: dict[str, float]
    steps: int
    seconds: float
    examples: int
    summary: dict[str, Any] = field(default_factory=dict)


Callback = Callable[["Trainer", TrainerState], None]


class Trainer:
    """Fine-tune a SentenceTransformer with a hardbatch sampler and the tiled InfoNCE loss.

    Args:
        config: the run's :class:`TrainConfig`.
        callbacks: called as ``callback(trainer, state)`` after every optimiser step (after logging and
            checkpointing); raising stops training (used to simulate crashes in tests).

    Example:
        >>> import tempfile
        >>> from hardbatch.data import PairDataset
        >>> from hardbatch.embed.models import make_tiny_model
        >>> pairs = PairDataset([f"question {i}" for i in range(8)], [f"answer {i}" for i in range(8)])
        >>> cfg = TrainConfig(data=pairs, output_dir=tempfile.mkdtemp(), model=make_tiny_model(),
        ...                   batch_size=4, eval_data=None, max_seq_length=16, write_report=False)
        >>> Trainer(cfg).fit().steps
        2
    """

    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.log = MetricsLog(self.output_dir / "metrics.jsonl")
        self.state = TrainerState()

    # ------------------------------------------------------------------ public entry point
    def fit(self) -> TrainResult:
        """Train (or resume) to the end and return the :class:`TrainResult`."""
        cfg = self.config
        ctx = init_distributed(cfg.device)
        self.ctx = ctx
        try:
            return self._fit(ctx)
        finally:
            ctx.close()

    # ------------------------------------------------------------------ set-up
    def _fit(self, ctx: DistContext) -> TrainResult:
        cfg = self.config
        checkpoint = self._prepare_output_dir(ctx)
        _seed_everything(cfg.seed, ctx.rank)
        self.train_data = _load_dataset(cfg.data, cfg.max_train_pairs, cfg.subset_seed, "training")
        self.eval_data = self._load_eval_data()
        self.model = self._load_model(checkpoint, ctx)
        self.sampler = self._build_sampler(ctx)
        self.steps_per_epoch = len(self.sampler) // ctx.world_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the {cfg.sampler} sampler yields {len(self.sampler)} batches per epoch, fewer than the "
                f"{ctx.world_size} ranks; use more data or a smaller batch size"
            )
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer = _adamw(self.model, cfg.lr, cfg.weight_decay)
        warmup = warmup_steps_for(self.total_steps, cfg.warmup_ratio)
        self.scheduler = warmup_linear_schedule(self.optimizer, self.total_steps, warmup)
        self.collator = PairCollator(_tokenizer_of(self.model), cfg.num_negatives, cfg.mask_duplicates)
        self.runner = StepRunner(self._wrap_model(ctx), cfg, ctx, self._autocast_dtype(ctx))
        if checkpoint is not None:
            self._restore(checkpoint, ctx)
        elif ctx.is_main:
            write_json(self.output_dir / "config.json", cfg.to_dict())
        ctx.barrier()
        self._train_loop(ctx)
        return self._finish(ctx)

    def _prepare_output_dir(self, ctx: DistContext) -> Checkpoint | None:
        """Decide between a fresh run and a resumption (rank 0 decides, every rank follows)."""
        cfg = self.config
        decision: dict[str, Any] = {}
        if ctx.is_main:
            found = latest_checkpoint(self.output_dir) if cfg.resume else None
            if found is None and not cfg.overwrite and self.log.path.exists() and not cfg.resume:
                decision["error"] = (
                    f"{self.output_dir} already holds a training run (metrics.jsonl); pass --resume to "
                    "continue it or --overwrite to start again"
                )
            elif found is None:
                for stale in (
                    "metrics.jsonl",
                    "checkpoints",
                    "final",
                    "report.md",
                    "curves.png",
                    "result.json",
                ):
                    path = self.output_dir / stale
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
            decision["checkpoint"] = None if found is None else (found.step, str(found.path))
            self.output_dir.mkdir(parents=True, exist_ok=True)
        decision = ctx.broadcast_object(decision)
        if "error" in decision:
            raise ConfigError(decision["error"])
        found_info = decision["checkpoint"]
        return None if found_info is None else Checkpoint(found_info[0], Path(found_info[1]))

    def _load_eval_data(self) -> Any:
        cfg = self.config
        spec = cfg.eval_data
        if isinstance(spec, str) and spec == "auto":
            spec = _default_eval_spec(cfg.data)
        if spec is None:
            return None
        return _load_dataset(spec, cfg.max_eval_pairs, cfg.subset_seed, "evaluation")

    def _load_model(self, checkpoint: Checkpoint | None, ctx: DistContext) -> Any:
        from hardbatch.embed.models import load_model

        cfg = self.config
        if checkpoint is not None:
            model = load_model(checkpoint.model_path, device=str(ctx.device))
        elif isinstance(cfg.model, str | Path):
            model = load_model(cfg.model, device=str(ctx.device))
        else:
            model = cfg.model.to(ctx.device)
        if cfg.max_seq_length is not None:
            model.max_seq_length = int(cfg.max_seq_length)
        model.train()
        return model

    def _build_sampler(self, ctx: DistContext) -> Any:
        from hardbatch.samplers import build_sampler

        cfg = self.config
        options = dict(cfg.sampler_options)
        if cfg.plan is not None:
            options.setdefault("plan", cfg.plan)
        options.update(self._embedding_inputs(options, ctx))
        return build_sampler(
            cfg.sampler,
            self.train_data,
            cfg.batch_size,
            seed=cfg.seed,
            world_size=ctx.world_size,
            **options,
        )

    def _embedding_inputs(self, options: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
        """Embeddings for samplers that need them (topic, gcbs, b3 without a plan), unless given.

        GCBS without a ``teacher`` re-embeds with the model being trained before every epoch (the
        paper's setting); otherwise the frozen teacher embeds the training pairs once, cached under
        ``output_dir/teacher-embeddings`` (rank 0 first, so the other ranks read the cache).
        """
        cfg = self.config
        given = {"query_emb", "positive_emb", "embed_fn", "labels", "teacher", "plan"}
        if cfg.sampler not in _EMBEDDING_SAMPLERS or given & set(options):
            return {}
        if cfg.sampler == "gcbs" and cfg.teacher is None:
            from hardbatch.samplers import model_embed_fn

            embed_fn = model_embed_fn(
                self.model, self.train_data, batch_size=cfg.eval_batch_size, device=str(ctx.device)
            )
            return {"embed_fn": embed_fn}
        from hardbatch.embed import embed_pairs

        teacher = cfg.teacher or (cfg.model if isinstance(cfg.model, str | Path) else self.model)
        embeddings = None
        for turn in ("main", "others"):
            if (turn == "main") == ctx.is_main:
                embeddings = embed_pairs(
                    self.train_data,
                    teacher,
                    self.output_dir / "teacher-embeddings",
                    batch_size=cfg.eval_batch_size,
                    max_seq_length=cfg.max_seq_length,
                    device=str(ctx.device),
                )
            ctx.barrier()
        if cfg.sampler == "topic":
            return {"query_emb": embeddings.query}
        return {"query_emb": embeddings.query, "positive_emb": embeddings.positive}

    def _wrap_model(self, ctx: DistContext) -> torch.nn.Module:
        encoder = DualEncoder(self.model)
        if not ctx.enabled:
            return encoder
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # BERT's pooler (and any head the loss does not use) gets no gradient, hence find_unused_parameters.
        return DistributedDataParallel(encoder, device_ids=device_ids, find_unused_parameters=True)

    def _autocast_dtype(self, ctx: DistContext) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "fp32" or (precision == "auto" and ctx.device.type != "cuda"):
            return None
        if ctx.device.type == "cpu" and precision == "bf16":
            return torch.bfloat16
        return torch.bfloat16

    # ------------------------------------------------------------------ the loop
    def _train_loop(self, ctx: DistContext) -> None:
        cfg = self.config
        state = self.state
        while state.step < self.total_steps and state.epoch < cfg.epochs:
            self.sampler.set_epoch(state.epoch)
            if state.batch_in_epoch:
                self.sampler.load_state_dict(self._sampler_state())
            for indices in self._rank_batches(ctx):
                started = time.perf_counter()
                state.last_lr = self.optimizer.param_groups[0]["lr"]
                loss = self._train_step(indices)
                state.seconds += time.perf_counter() - started
                state.step += 1
                state.batch_in_epoch += 1
                state.last_loss = loss
                state.window_loss += loss
                state.window_steps += 1
                done = state.step >= self.total_steps
                if state.step % cfg.log_every == 0 or done:
                    self._log_training(ctx)
                if cfg.eval_every and state.step % cfg.eval_every == 0 and not done:
                    self._evaluate(ctx)
                if cfg.save_every and state.step % cfg.save_every == 0 and not done:
                    self._save_checkpoint(ctx)
                if done and state.batch_in_epoch >= self.steps_per_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                self._run_callbacks()
                if done:
                    break
            else:
                # The epoch ran to its end.
                state.epoch += 1
                state.batch_in_epoch = 0
                if state.step < self.total_steps:
                    self._log_training(ctx)
                    self._evaluate(ctx)
                    self._save_checkpoint(ctx)
                continue
            break

    def _rank_batches(self, ctx: DistContext) -> Iterator[list[int]]:
        """This rank's batches of the current epoch: batch ``r`` of every group of ``P`` consecutive ones."""
        group: list[list[int]] = []
        for batch in self.sampler:
            group.append(batch)
            if len(group) == ctx.world_size:
                yield group[ctx.rank]
                group = []

    def _train_step(self, indices: list[int]) -> float:
        batch = self._collate(indices)
        loss = self.runner.step(batch)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        # A learnable logit scale is clamped on the parameter after the step (OpenCLIP), never in forward.
        clamp_logit_scales(self.model)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.ctx.mean(loss)

    def _collate(self, indices: list[int]) -> TokenizedPairs:
        rows = [self.train_data[i] for i in indices]
        mined = self._mined_negatives(indices)
        return self.collator(rows, batch_negatives=mined).to(self.ctx.device)

    def _mined_negatives(self, indices: list[int]) -> list[str] | None:
        """B3++: the batch's unified hard negatives from the plan (their positive texts), if enabled."""
        if int(getattr(self.sampler, "num_hard_negatives", 0) or 0) <= 0:
            return None
        ids = self.sampler.hard_negatives(indices)
        return [self.train_data.positives[i] for i in ids]

    # ------------------------------------------------------------------ logging, evaluation
    def _log_training(self, ctx: DistContext) -> None:
        state = self.state
        if state.window_steps == 0:
            return
        record = {
            "step": state.step,
            "epoch": round(state.epoch + state.batch_in_epoch / self.steps_per_epoch, 4),
            "loss": state.window_loss / state.window_steps,
            "lr": state.last_lr,
            "seconds": round(state.seconds, 3),
        }
        state.window_loss, state.window_steps = 0.0, 0
        if ctx.is_main:
            self.log.append(record)

    def _evaluate(self, ctx: DistContext) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        metrics: dict[str, float] = {}
        if ctx.is_main:
            rng = capture_rng_state()  # evaluation must not shift the training RNG streams
            self.model.eval()
            try:
                metrics = evaluate_pairs(
                    self.model, self.eval_data, batch_size=self.config.eval_batch_size, device=ctx.device
                )
            finally:
                self.model.train()
                restore_rng_state(rng)
            record = {
                "step": self.state.step,
                "epoch": round(self.state.epoch + self.state.batch_in_epoch / self.steps_per_epoch, 4),
                "split": getattr(self.eval_data, "name", "eval"),
                **metrics,
            }
            self.log.append(record)
        ctx.barrier()
        return metrics

    def _run_callbacks(self) -> None:
        for callback in self.callbacks:
            callback(self, self.state)

    # ------------------------------------------------------------------ checkpoints
    def _sampler_state(self) -> dict[str, Any]:
        state = dict(self.sampler.state_dict())
        # Batches actually trained on (all ranks), not what an iterator may have prefetched.
        state.update(epoch=self.state.epoch, batches_done=self.state.batch_in_epoch * self.ctx.world_size)
        return state

    def _save_checkpoint(self, ctx: DistContext) -> None:
        rng_states = ctx.gather_objects(capture_rng_state())
        if ctx.is_main:
            state = {
                "format": _STATE_FORMAT,
                "trainer": vars(self.state).copy(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self._sampler_state(),
                "rng": rng_states,
                "world_size": ctx.world_size,
                "config": self.config.to_dict(),
                "train_fingerprint": getattr(self.train_data, "fingerprint", None),
            }
            save_checkpoint(
                self.output_dir, self.state.step, self.model, state, keep=self.config.keep_checkpoints
            )
        ctx.barrier()

    def _restore(self, checkpoint: Checkpoint, ctx: DistContext) -> None:
        saved = load_trainer_state(checkpoint)
        self._check_resumable(saved, checkpoint, ctx)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainerState(**saved["trainer"])
        restore_rng_state(saved["rng"][ctx.rank])
        if ctx.is_main:
            self.log.truncate_after(self.state.step)
        ctx.barrier()

    def _check_resumable(self, saved: dict[str, Any], checkpoint: Checkpoint, ctx: DistContext) -> None:
        where = f"checkpoint {checkpoint.path}"
        if saved.get("format") != _STATE_FORMAT:
            raise ConfigError(f"{where}: unknown trainer state format {saved.get('format')!r}")
        if saved["world_size"] != ctx.world_size:
            raise ConfigError(
                f"{where} was written by {saved['world_size']} ranks; resume with the same number "
                f"(now {ctx.world_size})"
            )
        fingerprint = getattr(self.train_data, "fingerprint", None)
        if saved.get("train_fingerprint") != fingerprint:
            raise ConfigError(f"{where} was trained on different data (fingerprint mismatch)")
        now = self.config.to_dict()
        changed = [k for k in _RESUME_KEYS if saved["config"].get(k) != now.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {saved['config'].get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise ConfigError(f"{where}: cannot resume with changed settings ({diffs})")

    # ------------------------------------------------------------------ the end
    def _finish(self, ctx: DistContext) -> TrainResult:
        cfg = self.config
        last_eval = (
            [r for r in self.log.eval_records() if r["step"] == self.state.step] if ctx.is_main else []
        )
        # Rank 0 decides, so every rank takes part in the same barriers.
        if ctx.broadcast_object(bool(last_eval)):
            metrics = {k: v for k, v in last_eval[-1].items() if "@" in k} if last_eval else {}
        else:
            metrics = self._evaluate(ctx)
        final = self.output_dir / "final" if cfg.save_final else None
        summary: dict[str, Any] = {}
        if ctx.is_main:
            if final is not None:
                tmp = self.output_dir / ".final.tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                self.model.save(str(tmp), create_model_card=False)
                replace_dir_atomically(tmp, final)
            summary = {
                "train_data": getattr(self.train_data, "name", "?"),
                "train_pairs": len(self.train_data),
                "eval_data": getattr(self.eval_data, "name", None),
                "eval_pairs": len(self.eval_data) if self.eval_data is not None else 0,
                "sampler": cfg.sampler,
                "batch_size_per_device": cfg.batch_size,
                "world_size": ctx.world_size,
                "global_batch": cfg.batch_size * ctx.world_size,
                "steps": self.state.step,
                "epochs_completed": self.state.epoch,
                "train_seconds": round(self.state.seconds, 2),
                "seconds_per_step": round(self.state.seconds / max(1, self.state.step), 4),
                "device": str(ctx.device),
                "final_model": str(final) if final is not None else None,
                "metrics": metrics,
            }
            write_json(self.output_dir / "result.json", {"config": cfg.to_dict(), **summary})
            if cfg.write_report:
                from hardbatch.train.report import write_report

                write_report(self.output_dir, cfg.to_dict(), summary)
        ctx.barrier()
        return TrainResult(
            output_dir=self.output_dir,
            final_model=final,
            metrics=metrics,
            steps=self.state.step,
            seconds=self.state.seconds,
            examples=len(self.train_data),
            summary=summary,
        )


def train(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run :class:`Trainer` with ``config``; see :class:`TrainConfig` for every option."""
    return Trainer(config, callbacks).fit()


def evaluate_pairs(model: Any, dataset: Any, *, batch_size: int = 64, device: Any = None) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``dataset`` (queries against the set of its positives)."""
    from hardbatch.evaluate import evaluate_model

    return evaluate_model(model, dataset, batch_size=batch_size)


def load_result(run_dir: str | Path) -> dict[str, Any]:
    """The ``result.json`` of a finished run."""
    return read_json(Path(run_dir) / "result.json")


# ---------------------------------------------------------------------- helpers
def _seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def _load_dataset(spec: Any, limit: int | None, subset_seed: int, what: str) -> Any:
    from hardbatch.data import load_pairs

    dataset = load_pairs(spec) if isinstance(spec, str | Path) else spec
    if limit is not None and limit < len(dataset):
        rng = np.random.default_rng([subset_seed, 0x5EB5E7])
        keep = np.sort(rng.choice(len(dataset), size=limit, replace=False))
        dataset = dataset.subset(keep.tolist())
    if len(dataset) == 0:
        raise ConfigError(f"the {what} data is empty")
    return dataset


def _default_eval_spec(data: Any) -> str | None:
    if isinstance(data, str) and data.startswith("codesearch:") and data.split(":", 1)[1] == "train":
        return "codesearch:dev"
    return None


def _tokenizer_of(model: Any) -> Callable[[list[str]], dict[str, Any]]:
    """``model.preprocess`` (sentence-transformers >= 6) or ``model.tokenize`` (older releases)."""
    preprocess = getattr(model, "preprocess", None)
    return preprocess if callable(preprocess) else model.tokenize


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and normalisation weights (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
