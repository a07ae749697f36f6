"""Exact, memory-efficient contrastive losses: tiled InfoNCE/CLIP and sigmoid (CPU, Triton, distributed) + GradCache.

Public API:
    info_nce, reference_info_nce, InfoNCELoss                           the loss (functional, ground truth, module)
    stacked_keys, stacked_labels, grouped_keys, grouped_labels, text_ids key layouts and false-negative ids
    GradCache, cached_loss (module ``hardbatch.losses.gradcache``)       gradient caching for any encoder
    HardbatchInfoNCELoss                                                 sentence-transformers trainer loss
    sigmoid_loss, reference_sigmoid_loss, SigmoidLoss                   the sigmoid (SigLIP) loss
    HardbatchSigmoidLoss                                                 its sentence-transformers loss
    ClipLoss (module ``hardbatch.losses.open_clip``)                     OpenCLIP ``ClipLoss`` drop-in

The Triton kernels (``hardbatch.losses.triton_kernels``, ``hardbatch.losses.triton_sigmoid``) are imported
lazily, only when a CUDA tensor reaches :func:`info_nce` / :func:`sigmoid_loss` with Triton installed (or
``backend="triton"`` asks for them); the sentence-transformers adapter and the gradient cache are imported
on first attribute access.
"""

from __future__ import annotations

from hardbatch._lazy import lazy_getattr
from hardbatch.losses.info_nce import BACKENDS, info_nce, resolve_backend
from hardbatch.losses.layouts import grouped_keys, grouped_labels, stacked_keys, stacked_labels, text_ids
from hardbatch.losses.module import InfoNCELoss
from hardbatch.losses.reference import reference_info_nce, reference_sigmoid_loss
from hardbatch.losses.sigmoid import sigmoid_loss
from hardbatch.losses.sigmoid_module import SigmoidLoss

_LAZY = {
    "ClipLoss": "hardbatch.losses.open_clip",
    "GradCache": "hardbatch.losses.gradcache",
    "cached_loss": "hardbatch.losses.gradcache",
    "HardbatchInfoNCELoss": "hardbatch.losses.sentence_transformers",
    "HardbatchSigmoidLoss": "hardbatch.losses.sentence_transformers_sigmoid",
}

__all__ = [
    "BACKENDS",
    "ClipLoss",
    "GradCache",
    "HardbatchInfoNCELoss",
    "HardbatchSigmoidLoss",
    "InfoNCELoss",
    "SigmoidLoss",
    "cached_loss",
    "grouped_keys",
    "grouped_labels",
    "info_nce",
    "reference_info_nce",
    "reference_sigmoid_loss",
    "resolve_backend",
    "sigmoid_loss",
    "stacked_keys",
    "stacked_labels",
    "text_ids",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
