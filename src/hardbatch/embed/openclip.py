"""OpenCLIP models as sentence-transformers modules, loaded from a local checkpoint (extra ``openclip``).

:func:`load_openclip` builds ``open_clip.create_model_and_transforms(model_name, pretrained=<local file>)``
(``open-clip-torch`` ships the architecture configs; the weights must be a file you have) and wraps it in
:class:`OpenCLIPModule`, a sentence-transformers input module: ``preprocess`` tokenises texts with the
model's own tokenizer or applies its image transform, ``forward`` calls ``encode_text`` /
``encode_image``. The result is one ``SentenceTransformer`` (module + ``Normalize``) that hardbatch's
encode, mining, training (gradient cache, ``freeze_tower``) and evaluation use like any other, and that
saves with ``model.save(dir)`` (config JSON + safetensors; no pickle) and loads back with
:func:`hardbatch.embed.load_model`.

Status: written against open-clip-torch 3.x but not exercised on hardbatch's CPU CI machines, where the
PyPI torchvision wheel it needs does not load against the CPU build of torch; the tests skip there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hardbatch.errors import ConfigError, DataError, require

__all__ = ["OpenCLIPModule", "load_openclip"]

try:  # sentence-transformers >= 5.4 keeps its base modules here
    from sentence_transformers.base.modules import InputModule as _InputModule
except ImportError:  # pragma: no cover - older layout
    from sentence_transformers.models import InputModule as _InputModule


class OpenCLIPModule(_InputModule):
    """An OpenCLIP model as the input module of a ``SentenceTransformer``.

    Args:
        model_name: an OpenCLIP architecture name (``open_clip.list_models()``), e.g. ``"ViT-B-32"``.
        checkpoint: a local weights file for ``open_clip`` to load (None: random initialisation, as when
            :meth:`load` restores saved weights right after).
        max_seq_length: text context length (77 for the OpenAI-style models).
    """

    config_keys = ["model_name", "max_seq_length"]  # noqa: RUF012 - sentence-transformers' convention
    config_file_name = "openclip_config.json"

    def __init__(self, model_name: str, checkpoint: str | None = None, max_seq_length: int = 77) -> None:
        super().__init__()
        open_clip = require("open_clip", "openclip", "OpenCLIP models")
        if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
            raise ConfigError(
                f"OpenCLIP checkpoint '{checkpoint}' is not a local file; hardbatch never downloads weights"
            )
        self.model_name = model_name
        self.max_seq_length = int(max_seq_length)
        pretrained = None if checkpoint is None else str(Path(checkpoint).expanduser())
        self.clip, _, self.transform = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained
        )
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def modalities(self) -> list[str]:
        return ["text", "image"]

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Texts -> ``{"input_ids", "modality": "text"}``; PIL images -> ``{"pixel_values", "modality": "image"}``."""
        inputs = list(inputs)
        texts = [isinstance(x, str) for x in inputs]
        if all(texts):
            values = [prompt + x for x in inputs] if prompt else inputs
            ids = self.tokenizer(values, context_length=self.max_seq_length)
            return {"input_ids": ids, "modality": "text"}
        if any(texts):
            raise DataError("OpenCLIPModule.preprocess: one call takes texts or images, not both")
        pixels = torch.stack([self.transform(image.convert("RGB")) for image in inputs])
        return {"pixel_values": pixels, "modality": "image"}

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "pixel_values" in features:
            embedding = self.clip.encode_image(features["pixel_values"])
        else:
            embedding = self.clip.encode_text(features["input_ids"])
        features["sentence_embedding"] = embedding
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.clip.text_projection.shape[-1])

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=True)

    @classmethod
    def load(cls, model_name_or_path: str, **kwargs: Any) -> OpenCLIPModule:
        keys = ("subfolder", "token", "cache_folder", "revision", "local_files_only")
        hub = {k: kwargs[k] for k in keys if k in kwargs}
        config = cls.load_config(model_name_or_path, **hub)
        module = cls(model_name=config["model_name"], max_seq_length=config.get("max_seq_length", 77))
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module


def load_openclip(
    model_name: str,
    checkpoint: str | os.PathLike[str],
    *,
    max_seq_length: int = 77,
    device: str | None = "cpu",
):
    """A ``SentenceTransformer`` around an OpenCLIP model and a local checkpoint (normalised outputs).

    Raises:
        MissingExtraError: ``open-clip-torch`` is not installed (``pip install hardbatch[openclip]``).
        ConfigError: the checkpoint is not a local file.
    """
    require("open_clip", "openclip", "OpenCLIP models")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    module = OpenCLIPModule(model_name, str(checkpoint), max_seq_length)
    return SentenceTransformer(modules=[module, Normalize()], device=device)
