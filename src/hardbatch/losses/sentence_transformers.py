"""sentence-transformers adapter: ``HardbatchInfoNCELoss`` for ``SentenceTransformerTrainer(loss=...)``.

A drop-in for ``MultipleNegativesRankingLoss`` (and its cached / symmetric variants) computed by the tiled
:func:`hardbatch.losses.info_nce`: no (b × n) score matrix, optional gradient caching
(``mini_batch_size``), optional cross-device negatives (``gather_across_devices``), optional masking of
duplicate texts. Memory: O(b·(1+m)·d) embeddings + one mini-batch of activations with caching; time
8·b·n·d loss FLOPs (n = b·(1+m)·W keys) plus the encoder (one extra forward per mini-batch with caching).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardbatch.errors import ConfigError
from hardbatch.ids import stable_ids
from hardbatch.losses.gradcache import cached_loss
from hardbatch.losses.info_nce import info_nce
from hardbatch.losses.layouts import stacked_keys

__all__ = ["HardbatchInfoNCELoss"]

_SIMILARITIES = ("cosine", "dot")


def _similarity_name(similarity_fct: str | Callable) -> str:
    if isinstance(similarity_fct, str):
        name = similarity_fct
    else:
        name = {"cos_sim": "cosine", "dot_score": "dot"}.get(getattr(similarity_fct, "__name__", ""), "")
    if name not in _SIMILARITIES:
        raise ConfigError(
            f"similarity_fct: expected 'cosine' / 'dot' (or util.cos_sim / util.dot_score), got {similarity_fct!r}"
        )
    return name


def _embed_columns(model: nn.Module, features: list[dict[str, Tensor]]) -> list[Tensor]:
    try:  # sentence-transformers >= 5.4 merges like-shaped columns into one forward pass
        from sentence_transformers.base.losses.merged_forward import embed_columns
    except ImportError:
        return [model(f)["sentence_embedding"] for f in features]
    return embed_columns(model, features)


def _text_ids(features: dict[str, Tensor]) -> Tensor:
    """One id per row from its non-padding token ids: identical texts (same tokenizer) share an id."""
    ids, mask = features["input_ids"], features.get("attention_mask")
    rows = ids.tolist() if mask is None else [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return torch.from_numpy(stable_ids(repr(tokens) for tokens in rows)).to(ids.device)


class HardbatchInfoNCELoss(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        similarity_fct: str | Callable = "cosine",
        symmetric: bool = False,
        mini_batch_size: int | None = None,
        gather_across_devices: bool = False,
        mask_duplicates: bool = False,
        tile_size: int | tuple[int, int] | None = None,
        backend: str | None = None,
    ) -> None:
        """InfoNCE with in-batch and hard negatives, tiled (O(b·d) loss memory), for sentence-transformers.

        Columns: (anchor, positive[, negative_1, ..., negative_m]); keys are stacked sentence-transformers
        style ``[P_1..P_b, N1_1..N1_b, ...]`` and anchor i's positive is key i. The value equals
        ``MultipleNegativesRankingLoss`` (``symmetric=False``) or its symmetric variant
        (``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``).

        Args:
            model: the SentenceTransformer (kept as ``self.model``; the trainer swaps in its DDP wrapper).
            scale: logit scale = 1 / temperature (20 ⇔ temperature 0.05).
            similarity_fct: ``"cosine"`` (default, embeddings are L2-normalised) or ``"dot"``;
                ``util.cos_sim`` / ``util.dot_score`` are accepted too.
            symmetric: add the positive → anchor direction (CLIP-style mean of both directions).
            mini_batch_size: enable gradient caching with this many texts per encoder call (memory then
                scales with the embeddings, not the activations, of the batch). None: embed directly.
            gather_across_devices: under torch.distributed, every device's candidates are negatives for
                every anchor (equal per-device batch sizes required); gradients follow the local-loss
                convention (DDP averaging yields the exact global-batch gradient, no ×world_size).
            mask_duplicates: drop candidates whose text is identical (same token ids) to an anchor's positive
                from that anchor's negatives (and the anchor from that candidate's column in symmetric mode).
            tile_size: tile of the loss kernel (see :func:`hardbatch.losses.info_nce`).
            backend: ``auto`` | ``torch`` | ``triton``.

        Requirements:
            (anchor, positive) pairs or (anchor, positive, negative_1, ..., negative_m) tuples; no labels.

        Example:
            >>> from hardbatch.embed.models import make_tiny_model
            >>> model = make_tiny_model()
            >>> loss = HardbatchInfoNCELoss(model, mini_batch_size=2)
            >>> features = [model.tokenize(["a cat", "a dog", "a car"]), model.tokenize(["cat", "dog", "car"])]
            >>> value = loss(features, None)
            >>> value.backward()
        """
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"scale must be positive, got {scale}")
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ConfigError(f"mini_batch_size must be >= 1 or None, got {mini_batch_size}")
        self.model = model
        self.scale = float(scale)
        self.similarity = _similarity_name(similarity_fct)
        self.symmetric = symmetric
        self.mini_batch_size = mini_batch_size
        self.gather_across_devices = gather_across_devices
        self.mask_duplicates = mask_duplicates
        self.tile_size = tile_size
        self.backend = backend

    @property
    def uses_gradient_cache(self) -> bool:
        """True when the backward pass re-embeds mini-batches (sentence-transformers capability flag)."""
        return self.mini_batch_size is not None

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        if len(features) < 2:
            raise ConfigError(
                f"expected (anchor, positive[, negatives...]) columns, got {len(features)} column(s)"
            )
        ids = self._ids(features) if self.mask_duplicates else None
        if self.mini_batch_size is None:
            return self._loss(_embed_columns(self.model, features), ids)

        def encode(model: nn.Module, chunk: dict[str, Tensor]) -> Tensor:
            return model(chunk)["sentence_embedding"]

        return cached_loss(
            self.model,
            features,
            lambda *embeddings: self._loss(list(embeddings), ids),
            chunk_size=self.mini_batch_size,
            encode=encode,
        )

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss from per-column embeddings ``[anchor (b, d), positive (b, d), negative_j (b, d)...]``."""
        return self._loss(embeddings, None)

    def _ids(self, features: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        candidates = [_text_ids(f) for f in features[1:]]
        return candidates[0], torch.cat(candidates)

    def _group(self) -> Any:
        if not self.gather_across_devices:
            return None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None  # single process: nothing to gather (same as sentence-transformers)
        return torch.distributed.group.WORLD

    def _loss(self, embeddings: list[Tensor], ids: tuple[Tensor, Tensor] | None) -> Tensor:
        if len(embeddings) < 2:
            raise ConfigError(f"expected at least 2 embedding columns, got {len(embeddings)}")
        if self.similarity == "cosine":
            embeddings = [F.normalize(e, p=2, dim=-1) for e in embeddings]
        keys, labels = stacked_keys(embeddings[1], embeddings[2:])
        return info_nce(
            embeddings[0],
            keys,
            labels,
            scale=self.scale,
            symmetric=self.symmetric,
            query_ids=None if ids is None else ids[0],
            key_ids=None if ids is None else ids[1],
            tile_size=self.tile_size,
            group=self._group(),
            backend=self.backend,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "similarity_fct": self.similarity,
            "symmetric": self.symmetric,
            "mini_batch_size": self.mini_batch_size,
            "gather_across_devices": self.gather_across_devices,
            "mask_duplicates": self.mask_duplicates,
            "tile_size": self.tile_size,
        }

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    @property
    def citation(self) -> str:
        return """
@misc{cheng2024breakingmemorybarrier,
      title={Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss},
      author={Zesen Cheng and Hang Zhang and Kehan Li and Sicong Leng and Zhiqiang Hu and Fei Wu and Deli Zhao and Xin Li and Lidong Bing},
      year={2024},
      eprint={2410.17243},
      archivePrefix={arXiv},
      primaryClass={cs.CV},
      url={https://arxiv.org/abs/2410.17243},
}
@inproceedings{gao2021scaling,
      title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
      author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
      booktitle={Proceedings of the 6th Workshop on Representation Learning for NLP},
      year={2021},
      url={https://arxiv.org/abs/2101.06983},
}
"""
