"""sentence-transformers adapter: ``HardbatchInfoNCELoss`` for ``SentenceTransformerTrainer(loss=...)``.

A drop-in for ``MultipleNegativesRankingLoss`` (and its cached / symmetric variants) computed by the tiled
:func:`hardbatch.losses.info_nce`: no (b × n) score matrix, optional gradient caching
(``mini_batch_size``), optional cross-device negatives (``gather_across_devices``), optional masking of
duplicate texts. Memory: O(b·(1+m)·d) embeddings + one mini-batch of activations with caching; time
8·b·n·d loss FLOPs (n = b·(1+m)·W keys) plus the encoder (one extra forward per mini-batch with caching).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from hardbatch.losses.info_nce import info_nce
from hardbatch.losses.sentence_transformers_base import SentenceTransformersLoss

__all__ = ["HardbatchInfoNCELoss"]


class HardbatchInfoNCELoss(SentenceTransformersLoss):
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
        distributed: str = "auto",
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
            distributed: with ``gather_across_devices``: ``"gather"``, ``"ring"`` (memory per device
                independent of the number of devices) or ``"auto"``; see :func:`hardbatch.losses.info_nce`.

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
        super().__init__(
            model, scale, similarity_fct, mini_batch_size, gather_across_devices, mask_duplicates, tile_size
        )
        self.scale = float(scale)
        self.symmetric = symmetric
        self.backend = backend
        self.distributed = distributed

    def _stacked_loss(self, query: Tensor, keys: Tensor, **shared: Any) -> Tensor:
        return info_nce(
            query,
            keys,
            scale=self.scale,
            symmetric=self.symmetric,
            backend=self.backend,
            distributed=self.distributed,
            **shared,
        )

    def get_config_dict(self) -> dict[str, Any]:
        own = {"scale": self.scale, "symmetric": self.symmetric, "distributed": self.distributed}
        return {**own, **super().get_config_dict()}

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
