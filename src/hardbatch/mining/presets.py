"""The B3 paper's recipe as presets: ``b3-paper`` (B3) and ``b3pp-paper`` (B3++, h = 5).

Values (Thirukovalluru et al., NeurIPS 2025, §4 and App. C; official README for K):

============================  ===========================  ===========================================
setting                       paper                        hardbatch
============================  ===========================  ===========================================
temperature                   0.02                         ``scale=50``
K (cluster size)              32                           ``cluster_size=32``
p (skip)                      30; 70 for VQA sets          ``skip={"*": 30, <vqa sources>: 70}``
self in p                     rank 0 (official code)       ``count_self=True``
m (window)                    100                          ``window=100``
h (B3++ hard negatives)       5 per example; B3: 0         ``num_hard_negatives=5`` (``b3pp-paper``)
global batch                  1024                         ``batch_size = 1024 / world_size`` per device
batch composition             |B|/K clusters, one dataset  ``same_source=True``, global batches
community detection           METIS, one k-way call        ``community="metis-kway"`` (the default
                              (official code)              ``"metis"``, recursive bisection, cuts
                                                           harder clusters: docs/b3.md)
============================  ===========================  ===========================================

Not covered (model-specific): LoRA rank 8, peak LR 1e-4, 2000 steps, last-token pooling, image budget.
A preset only fills settings left at their defaults, so an explicit value always wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from hardbatch.errors import ConfigError

__all__ = ["PAPER", "PRESETS", "paper_skip", "preset", "vqa_sources"]

#: The paper's hyperparameters (see the module docstring).
PAPER: dict[str, Any] = {
    "scale": 50.0,
    "cluster_size": 32,
    "skip": 30,
    "vqa_skip": 70,
    "window": 100,
    "count_self": True,
    "community": "metis-kway",
    "global_batch": 1024,
    "hard_negatives": 5,
}

PRESETS: dict[str, dict[str, Any]] = {
    "b3-paper": {**PAPER, "hard_negatives": 0},
    "b3pp-paper": dict(PAPER),
}


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (a copy).

    Raises:
        ConfigError: unknown preset.

    Example:
        >>> preset("b3pp-paper")["hard_negatives"], preset("b3-paper")["hard_negatives"]
        (5, 0)
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def vqa_sources(source_names: Iterable[str] | None) -> list[str]:
    """Sources whose name contains ``vqa`` (case-insensitive): the paper's short-answer sets, p = 70.

    Example:
        >>> vqa_sources(["MSCOCO_i2t", "OK-VQA", "DocVQA"])
        ['OK-VQA', 'DocVQA']
    """
    return [name for name in source_names or [] if "vqa" in name.lower()]


def paper_skip(vqa: Iterable[str] = (), settings: dict[str, Any] | None = None) -> int | dict[str, int]:
    """The paper's p: 30 for every source, 70 for the VQA sources named in ``vqa``.

    Example:
        >>> paper_skip(["vqa"])
        {'*': 30, 'vqa': 70}
    """
    settings = settings or PAPER
    names = list(vqa)
    if not names:
        return int(settings["skip"])
    return {"*": int(settings["skip"]), **{name: int(settings["vqa_skip"]) for name in names}}


def per_device_batch(global_batch: int, world_size: int | None = None) -> int:
    """``global_batch / world_size`` (world size from ``WORLD_SIZE``, as torchrun sets it, default 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if global_batch % world:
        raise ConfigError(f"the paper's global batch {global_batch} does not split over {world} ranks")
    return global_batch // world


def apply_train_preset(config: Any, defaults: dict[str, Any]) -> None:
    """Fill a :class:`~hardbatch.train.TrainConfig`'s settings that are still at their defaults.

    Sets ``sampler="b3"`` (B3++: ``num_hard_negatives=5``), ``scale=50``, the per-device share of the
    global batch 1024 and, without a plan, the mining options of the lazily mined plan (K=32, p=30, m=100,
    the paper's self count). VQA sources (p=70) cannot be recognised before the data is loaded: mine the
    plan with ``hardbatch mine b3 --preset b3-paper`` (which does), or give
    ``sampler_options={"mine_options": {"skip": {"*": 30, "<vqa source>": 70}}}``.

    Args:
        config: the TrainConfig (changed in place).
        defaults: field name → dataclass default, to tell what the user left unset.
    """
    settings = preset(config.preset)
    if config.sampler == defaults["sampler"]:
        config.sampler = "b3"
    if config.scale == defaults["scale"]:
        config.scale = float(settings["scale"])
    if config.batch_size == defaults["batch_size"]:
        config.batch_size = per_device_batch(int(settings["global_batch"]))
    options = dict(config.sampler_options)
    if settings["hard_negatives"] and config.sampler in ("b3", "random-hn"):
        options.setdefault("num_hard_negatives", int(settings["hard_negatives"]))
    if config.plan is None and config.sampler in ("b3", "random-hn"):
        mine = dict(options.get("mine_options") or {})
        for key in ("cluster_size", "skip", "window", "count_self", "community"):
            mine.setdefault(key, settings[key])
        options["mine_options"] = mine
    config.sampler_options = options
