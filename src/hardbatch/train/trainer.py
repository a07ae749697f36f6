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

import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardbatch.errors import ConfigError, HardbatchError, TrainingDivergedError
from hardbatch.io import disk_full_as_os_error, read_json, write_json
from hardbatch.losses.module import clamp_logit_scales
from hardbatch.progress import progress_enabled
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
from hardbatch.train.config import TrainConfig, training_precision
from hardbatch.train.distributed import DistContext, init_distributed
from hardbatch.train.metrics_log import MetricsLog
from hardbatch.train.run_dir import (
    RunDirLock,
    foreign_entries,
    is_marked,
    own_outputs,
    remove_outputs,
    write_marker,
)
from hardbatch.train.schedule import warmup_linear_schedule, warmup_steps_for
from hardbatch.train.step import DualEncoder, StepRunner

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainerState", "train"]

_STATE_FORMAT = 1
# Settings that change neither the trained weights nor the evaluation metrics: everything else in
# TrainConfig must be unchanged for --resume (and for a finished run to count as "nothing to do").
# The training and evaluation data and the B3 plan are compared by their content fingerprints instead of
# their paths, so moving a file does not block a resume and editing it does.
_RESULT_NEUTRAL = frozenset(
    {
        "data",
        "eval_data",
        "plan",
        "output_dir",
        "resume",
        "overwrite",
        "write_report",
        "save_final",
        "keep_checkpoints",
        "save_every",
        "log_every",
        "eval_batch_size",
        "device",
        "on_nonfinite",
        "progress",
    }
)

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Progress counters, passed to callbacks after every optimiser step.

    Attributes:
        step: optimiser steps completed.
        epoch: current epoch (0-based).
        batch_in_epoch: steps completed within ``epoch``.
        last_loss: loss of the last step (mean over ranks).
        skipped_steps: steps whose loss or gradient was not finite and were skipped
            (``on_nonfinite="skip"``).
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
    skipped_steps: int = 0


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
        self._lock: RunDirLock | None = None
        try:
            return self._fit(ctx)
        finally:
            if self._lock is not None:
                self._lock.release()
            ctx.close()

    # ------------------------------------------------------------------ set-up
    def _fit(self, ctx: DistContext) -> TrainResult:
        cfg = self.config
        checkpoint = self._prepare_output_dir(ctx)
        _seed_everything(cfg.seed, ctx.rank)
        self.train_data = _load_dataset(cfg.data, cfg.max_train_pairs, cfg.subset_seed, "training")
        self.eval_data = self._load_eval_data()
        if self._finished is not None:
            return self._nothing_to_do(self._finished)
        self.model = self._load_model(checkpoint, ctx)
        self.sampler = self._build_sampler(ctx)
        self._check_plan()
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
        from hardbatch.embed.prompts import model_prompts

        query_prompt, document_prompt = model_prompts(self.model)
        self.collator = PairCollator(
            _tokenizer_of(self.model), cfg.num_negatives, cfg.mask_duplicates, query_prompt, document_prompt
        )
        # Rank 0's reading of precision="auto", so ranks on machines of different kinds train alike.
        self._precision = ctx.broadcast_object(training_precision(cfg.precision, ctx.device))
        self.runner = StepRunner(self._wrap_model(ctx), cfg, ctx, self._autocast_dtype(ctx))
        self._resume_sampler_state: dict[str, Any] | None = None
        if checkpoint is not None:
            self._restore(checkpoint, ctx)
        elif ctx.is_main:
            write_json(self.output_dir / "config.json", cfg.to_dict())
        ctx.barrier()
        self._train_loop(ctx)
        return self._finish(ctx)

    def _prepare_output_dir(self, ctx: DistContext) -> Checkpoint | None:
        """Lock the run folder and decide between a fresh run, a resumption and "nothing to do".

        Rank 0 decides (under the folder's lock), every rank follows. Only hardbatch's own outputs are
        ever deleted, and only in a folder carrying our marker or with ``overwrite``; see
        :mod:`hardbatch.train.run_dir`.
        """
        decision: dict[str, Any] = {}
        if ctx.is_main:
            try:
                self._lock = RunDirLock(self.output_dir).acquire()
                decision = self._decide_run_dir()
            except HardbatchError as error:
                decision = {"error": str(error)}
        decision = ctx.broadcast_object(decision)
        if "error" in decision:
            raise ConfigError(decision["error"])
        self._finished = decision.get("finished")
        found_info = decision.get("checkpoint")
        return None if found_info is None else Checkpoint(found_info[0], Path(found_info[1]))

    def _decide_run_dir(self) -> dict[str, Any]:
        cfg, root = self.config, self.output_dir
        marked, ours, foreign = is_marked(root), own_outputs(root), foreign_entries(root)
        found = _newest_readable_checkpoint(root) if cfg.resume and not cfg.overwrite else None
        if found is not None and (marked or "metrics.jsonl" in ours):  # older runs carry no marker
            write_marker(root)
            return {"checkpoint": (found.step, str(found.path))}
        if cfg.resume and not cfg.overwrite and marked and "result.json" in ours:
            return {"finished": read_json(root / "result.json")}
        if not cfg.overwrite:
            if not marked and (foreign or ours):
                shown = ", ".join(sorted({*foreign, *ours})[:5])
                raise ConfigError(
                    f"{root} is not empty ({shown}) and was not created by `hardbatch train`; choose an "
                    "empty or new --output-dir, or pass --overwrite to write into it (only hardbatch's own "
                    "outputs are replaced)"
                )
            if ours and not cfg.resume:
                raise ConfigError(
                    f"{root} already holds a training run ({', '.join(ours)}); pass --resume to continue "
                    "it or --overwrite to start again"
                )
        if ours:
            # --overwrite, or --resume of our own run that crashed before its first checkpoint.
            removed = remove_outputs(root)
            logger.warning("%s: starting from step 0, replacing %s", root, ", ".join(removed))
        write_marker(root)
        return {}

    def _nothing_to_do(self, finished: dict[str, Any]) -> TrainResult:
        """``--resume`` of a finished run: check it was made with these settings and return its result."""
        where = f"{self.output_dir} (finished run)"
        recorded = {  # result.json files written before fingerprints were recorded carry none
            name: finished[key]
            for name, key in (("training data", "train_fingerprint"), ("evaluation data", "eval_fingerprint"))
            if key in finished
        }
        self._check_settings(
            finished.get("config", {}),
            recorded,
            where,
            advice="pass --overwrite to train again",
        )
        logger.warning("%s is already finished with these settings: nothing to do", self.output_dir)
        final = finished.get("final_model")
        return TrainResult(
            output_dir=self.output_dir,
            final_model=Path(final) if final else None,
            metrics=dict(finished.get("metrics", {})),
            steps=int(finished.get("steps", 0)),
            seconds=float(finished.get("train_seconds", 0.0)),
            examples=int(finished.get("train_pairs", len(self.train_data))),
            summary=finished,
        )

    def _check_plan(self) -> None:
        """A B3 plan must have been mined from this training data (its recorded dataset fingerprint)."""
        plan = getattr(self.sampler, "_plan", None)
        fingerprint = getattr(self.train_data, "fingerprint", None)
        if plan is None or not hasattr(plan, "check_matches") or fingerprint is None:
            return
        source = self.config.plan or self.config.sampler_options.get("plan")
        source = source if isinstance(source, str | Path) else None
        if "dataset" in plan.hashes:
            plan.check_matches(expected_hash={"dataset": fingerprint}, source=source)
        else:
            warnings.warn(
                f"plan {source or ''} records no dataset fingerprint (mined from embeddings alone), so "
                "hardbatch cannot check that it belongs to this training data",
                stacklevel=2,
            )

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
        _prepare_image_text_model(model, self.train_data, cfg.freeze_tower)
        if cfg.query_prompt is not None or cfg.document_prompt is not None:
            from hardbatch.embed.prompts import set_model_prompts

            set_model_prompts(model, cfg.query_prompt, cfg.document_prompt)
        model.train()
        return model

    def _build_sampler(self, ctx: DistContext) -> Any:
        from hardbatch.samplers import SamplerInputs, build_sampler

        cfg = self.config
        inputs = SamplerInputs(
            dataset=self.train_data,
            seed=cfg.seed,
            world_size=ctx.world_size,
            plan=cfg.plan,
            teacher=lambda: self._teacher_embeddings(ctx),
            teacher_is_explicit=cfg.teacher is not None,
            model=self.model,
            embed_batch_size=cfg.eval_batch_size,
            device=str(ctx.device),
        )
        options = dict(cfg.sampler_options)
        if cfg.remine_every is not None:
            options["remine_every"] = cfg.remine_every
        return build_sampler(cfg.sampler, inputs, cfg.batch_size, **options)

    def _teacher_embeddings(self, ctx: DistContext) -> Any:
        """The teacher's embeddings of the training pairs, for samplers that ask for them.

        The teacher is ``config.teacher``, else the starting model; cached under
        ``output_dir/teacher-embeddings``, written by rank 0 first so the other ranks read the cache.
        """
        from hardbatch.distributed import rank0_first
        from hardbatch.embed import embed_pairs

        cfg = self.config
        teacher = cfg.teacher or (cfg.model if isinstance(cfg.model, str | Path) else self.model)
        with rank0_first():
            return embed_pairs(
                self.train_data,
                teacher,
                self.output_dir / "teacher-embeddings",
                batch_size=cfg.eval_batch_size,
                max_seq_length=cfg.max_seq_length,
                device=str(ctx.device),
            )

    def _wrap_model(self, ctx: DistContext) -> torch.nn.Module:
        encoder = DualEncoder(self.model)
        if not ctx.enabled:
            return encoder
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # BERT's pooler (and any head the loss does not use) gets no gradient, hence find_unused_parameters.
        return DistributedDataParallel(encoder, device_ids=device_ids, find_unused_parameters=True)

    def _autocast_dtype(self, ctx: DistContext) -> torch.dtype | None:
        return torch.bfloat16 if self._precision == "bf16" else None

    # ------------------------------------------------------------------ the loop
    def _train_loop(self, ctx: DistContext) -> None:
        cfg = self.config
        state = self.state
        while state.step < self.total_steps and state.epoch < cfg.epochs:
            self.sampler.set_epoch(state.epoch)
            # A resumed sampler gets its saved state even at an epoch boundary (B3's re-mined plan).
            if state.batch_in_epoch or self._resume_sampler_state is not None:
                resume_state = self._resume_sampler_state or self._sampler_state()
                self.sampler.load_state_dict({**resume_state, **self._sampler_state(position_only=True)})
            self._resume_sampler_state = None
            stopped = False
            with self._epoch_progress(ctx) as bar:
                for indices in self._rank_batches(ctx):
                    started = time.perf_counter()
                    state.last_lr = self.optimizer.param_groups[0]["lr"]
                    loss = self._train_step(indices)
                    state.seconds += time.perf_counter() - started
                    state.step += 1
                    state.batch_in_epoch += 1
                    if loss is None:  # a non-finite step skipped (on_nonfinite="skip")
                        state.skipped_steps += 1
                    else:
                        state.last_loss = loss
                        state.window_loss += loss
                        state.window_steps += 1
                    bar.advance(loss=state.last_loss, lr=state.last_lr, seconds=time.perf_counter() - started)
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
                        stopped = True
                        break
            if stopped:
                break
            # The epoch ran to its end.
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.step < self.total_steps:
                self._log_training(ctx)
                self._evaluate(ctx)
                self._save_checkpoint(ctx)

    def _epoch_progress(self, ctx: DistContext) -> Any:
        """Rank 0's bar over this epoch's steps (loss, lr, pairs/s); a no-op elsewhere or when disabled."""
        from hardbatch.progress import step_progress

        state = self.state
        epoch_steps = min(self.steps_per_epoch, self.total_steps - state.step + state.batch_in_epoch)
        return step_progress(
            f"epoch {state.epoch + 1}/{self.config.epochs}",
            total=epoch_steps,
            completed=state.batch_in_epoch,
            items_per_step=self.config.batch_size * ctx.world_size,
            show=ctx.is_main and progress_enabled(self.config.progress),
        )

    def _rank_batches(self, ctx: DistContext) -> Iterator[list[int]]:
        """This rank's batches of the current epoch: batch ``r`` of every group of ``P`` consecutive ones."""
        group: list[list[int]] = []
        for batch in self.sampler:
            group.append(batch)
            if len(group) == ctx.world_size:
                yield group[ctx.rank]
                group = []

    def _train_step(self, indices: list[int]) -> float | None:
        """One optimiser step; returns the loss (mean over ranks), or ``None`` when it was skipped.

        A non-finite loss or gradient norm stops training with :class:`TrainingDivergedError` *before* the
        optimiser applies it (``on_nonfinite="stop"``) or skips the update (``"skip"``; the schedule still
        advances). Both values are identical on every rank (DDP averages the gradients), so every rank
        takes the same branch.
        """
        cfg = self.config
        batch = self._collate(indices)
        loss = self.ctx.mean(self.runner.step(batch))
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in parameters]))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            if cfg.on_nonfinite == "stop":
                last = latest_checkpoint(self.output_dir)
                raise TrainingDivergedError(
                    f"step {self.state.step + 1}: non-finite loss ({loss}) or gradient norm ({grad_norm}); "
                    "training stopped before applying it and nothing non-finite was saved (last "
                    f"checkpoint: {last.path if last else 'none'}). Lower --lr, keep --max-grad-norm, or "
                    "pass --on-nonfinite skip to skip such steps"
                )
            logger.warning("step %d: non-finite loss or gradient, update skipped", self.state.step + 1)
            self.scheduler.step()
            return None
        self.optimizer.step()
        # A learnable logit scale is clamped on the parameter after the step (OpenCLIP), never in forward.
        clamp_logit_scales(self.model)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _check_finite_weights(self, what: str) -> None:
        """Refuse to save a model with a NaN or infinite weight (O(parameters), once per save)."""
        for name, param in self.model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                raise TrainingDivergedError(
                    f"step {self.state.step}: weight {name} is not finite; the {what} was not saved. "
                    "Lower --lr or keep --max-grad-norm"
                )

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
                from hardbatch.evaluate import evaluate_model

                metrics = evaluate_model(self.model, self.eval_data, batch_size=self.config.eval_batch_size)
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
    def _sampler_state(self, position_only: bool = False) -> dict[str, Any]:
        # Batches actually trained on (all ranks), not what an iterator may have prefetched.
        position = {
            "epoch": self.state.epoch,
            "batches_done": self.state.batch_in_epoch * self.ctx.world_size,
        }
        return position if position_only else {**self.sampler.state_dict(), **position}

    def _save_checkpoint(self, ctx: DistContext) -> None:
        self._check_finite_weights("checkpoint")  # same weights on every rank: all raise or none
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
                "fingerprints": self._fingerprints(),
                "training_precision": self._precision,
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
        # The sampler's own saved state (GCBS: the interrupted epoch's batches, mined with the weights of
        # that epoch's start; B3: its plan fingerprint), applied when the loop re-enters that epoch.
        self._resume_sampler_state = dict(saved["sampler"])
        restore_rng_state(saved["rng"][ctx.rank])
        self._keep_precision(saved.get("training_precision"), checkpoint, ctx)
        if ctx.is_main:
            self.log.truncate_after(self.state.step)
        ctx.barrier()

    def _keep_precision(self, saved: str | None, checkpoint: Checkpoint, ctx: DistContext) -> None:
        """A resumed run goes on in the precision it started in, whatever this machine would pick.

        Only ``precision="auto"`` can differ here (an explicit precision is a setting the resume compares):
        a run begun on a CPU with fast bf16 and resumed on one without stays bf16, and the other way round.
        """
        if saved is None or saved == self._precision:  # older checkpoints record none
            return
        if ctx.is_main:
            warnings.warn(
                f"checkpoint {checkpoint.path}: the run trained in {saved} and continues in {saved}, although "
                f"precision='auto' picks {self._precision} on this machine (a new run with --precision "
                f"{self._precision} trains in that)",
                stacklevel=2,
            )
        self._precision = saved
        self.runner.autocast_dtype = self._autocast_dtype(ctx)

    def _fingerprints(self) -> dict[str, Any]:
        """Content fingerprints of what the run trains and evaluates on (compared on resume)."""
        plan = getattr(getattr(self, "sampler", None), "_plan", None)
        return {
            "training data": getattr(self.train_data, "fingerprint", None),
            "evaluation data": getattr(self.eval_data, "fingerprint", None),
            "plan": getattr(plan, "fingerprint", None),
        }

    def _check_resumable(self, saved: dict[str, Any], checkpoint: Checkpoint, ctx: DistContext) -> None:
        where = f"checkpoint {checkpoint.path}"
        if saved.get("format") != _STATE_FORMAT:
            raise ConfigError(f"{where}: unknown trainer state format {saved.get('format')!r}")
        if saved["world_size"] != ctx.world_size:
            raise ConfigError(
                f"{where} was written by {saved['world_size']} ranks; resume with the same number "
                f"(now {ctx.world_size})"
            )
        fingerprints = dict(saved.get("fingerprints") or {"training data": saved.get("train_fingerprint")})
        self._check_settings(saved["config"], fingerprints, where)

    def _check_settings(
        self,
        saved_config: dict[str, Any],
        saved_fingerprints: dict[str, Any],
        where: str,
        advice: str = "resume with the same settings or start a new run",
    ) -> None:
        """Raise :class:`ConfigError` naming every setting or input that differs from the saved run."""
        now = self.config.to_dict()
        keys = sorted((set(now) | set(saved_config)) - _RESULT_NEUTRAL)
        diffs = [
            f"{k}: {saved_config.get(k)!r} -> {now.get(k)!r}"
            for k in keys
            if saved_config.get(k) != now.get(k)
        ]
        current = self._fingerprints()
        for name, value in saved_fingerprints.items():
            if name == "plan" and value is not None and current["plan"] is None:
                current["plan"] = getattr(getattr(self, "sampler", None), "plan", None)
                current["plan"] = getattr(current["plan"], "fingerprint", None)
            if value != current.get(name):
                diffs.append(f"{name}: fingerprint {str(value)[:12]} -> {str(current.get(name))[:12]}")
        if diffs:
            raise ConfigError(
                f"{where}: cannot continue with changed settings ({'; '.join(diffs)}); {advice}"
            )

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
        self._check_finite_weights("final model")
        summary: dict[str, Any] = {}
        if ctx.is_main:
            if final is not None:
                tmp = self.output_dir / ".final.tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                with disk_full_as_os_error(final):
                    self.model.save(str(tmp), create_model_card=False)
                replace_dir_atomically(tmp, final)
            summary = {
                "train_data": getattr(self.train_data, "name", "?"),
                "train_pairs": len(self.train_data),
                "eval_data": getattr(self.eval_data, "name", None),
                "eval_pairs": len(self.eval_data) if self.eval_data is not None else 0,
                "sampler": cfg.sampler,
                "sampler_config": self.sampler.get_config_dict(),
                "batch_size_per_device": cfg.batch_size,
                "world_size": ctx.world_size,
                "global_batch": cfg.batch_size * ctx.world_size,
                "steps": self.state.step,
                "skipped_steps": self.state.skipped_steps,
                "epochs_completed": self.state.epoch,
                "train_seconds": round(self.state.seconds, 2),
                "seconds_per_step": round(self.state.seconds / max(1, self.state.step), 4),
                "device": str(ctx.device),
                # What precision="auto" resolved to on this machine (it follows the CPU's bf16 speed).
                "training_precision": self._precision,
                "prompts": dict(zip(("query", "document"), _prompts_in_use(self.model))),
                "final_model": str(final) if final is not None else None,
                "metrics": metrics,
                "train_fingerprint": getattr(self.train_data, "fingerprint", None),
                "eval_fingerprint": getattr(self.eval_data, "fingerprint", None),
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


# ---------------------------------------------------------------------- helpers
def _newest_readable_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint whose trainer state loads; a truncated or refused newer one is skipped."""
    from hardbatch.errors import DataError
    from hardbatch.train.checkpoint import list_checkpoints

    for checkpoint in reversed(list_checkpoints(run_dir)):
        try:
            load_trainer_state(checkpoint)
        except DataError as error:
            logger.warning("skipping checkpoint %s: %s", checkpoint.path, error)
            continue
        return checkpoint
    return None


def _seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def _load_dataset(spec: Any, limit: int | None, subset_seed: int, what: str) -> Any:
    from hardbatch.data import load_pairs

    dataset = load_pairs(spec) if isinstance(spec, str | Path) else spec
    if limit is not None:
        dataset = dataset.sample(limit, [subset_seed, 0x5EB5E7])
    if len(dataset) == 0:
        raise ConfigError(f"the {what} data is empty")
    return dataset


def _default_eval_spec(data: Any) -> str | None:
    if isinstance(data, str) and data.startswith("codesearch:") and data.split(":", 1)[1] == "train":
        return "codesearch:dev"
    if isinstance(data, str) and data.split("?", 1)[0] == "emoji:train":
        return "emoji:test" + data[len("emoji:train") :]  # same build options, the held-out families
    return None


def _prepare_image_text_model(model: Any, data: Any, freeze: str | None) -> None:
    """Check an image dataset meets a model that takes images; freeze the requested tower."""
    if getattr(data, "has_images", False):
        from hardbatch.embed.encode import check_takes_images

        check_takes_images(model)
    if "image" in getattr(model, "modalities", ()):
        from hardbatch.embed.clip import cap_max_seq_length

        cap_max_seq_length(model)  # after the configured max_seq_length (default 128 > CLIP's 77)
    if freeze is not None:
        from hardbatch.embed.clip import freeze_tower

        freeze_tower(model, freeze)


def _prompts_in_use(model: Any) -> tuple[str, str]:
    from hardbatch.embed.prompts import model_prompts

    return model_prompts(model)


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
