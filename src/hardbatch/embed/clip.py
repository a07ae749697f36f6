"""Image–text dual encoders: a tiny random CLIP for tests, local CLIP checkpoints, tower freezing.

Everything here is a plain ``SentenceTransformer`` whose first module is sentence-transformers' own
``Transformer`` over a Hugging Face ``CLIPModel`` (text tower: ``text_model`` + ``text_projection``,
image tower: ``vision_model`` + ``visual_projection``). So one model object embeds both modalities
(``model.encode(["a text"])``, ``model.encode([pil_image])``), saves with ``model.save(path)`` and loads
with :func:`hardbatch.embed.load_model` like any text model; nothing is ever downloaded.

OpenCLIP checkpoints load through :func:`hardbatch.embed.openclip.load_openclip` (extra ``openclip``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardbatch.errors import ConfigError

__all__ = ["TOWERS", "ensure_normalized", "freeze_tower", "load_clip", "make_tiny_clip", "tower_parameters"]

TOWERS = ("text", "image")


def make_tiny_clip(
    hidden_size: int = 32,
    num_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 32,
    max_seq_length: int = 32,
    seed: int = 0,
):
    """A randomly initialised small CLIP (about 1M parameters, mostly the 30k-token embedding table).

    The text tower uses the packaged MiniLM (BERT) tokenizer, so no vocabulary is downloaded; its
    embedding is read at the ``[SEP]`` token (CLIP reads its own end-of-text token). Images are resized
    and centre-cropped to ``image_size`` by the CLIP image processor.

    Args:
        hidden_size: width of both towers.
        num_layers: transformer layers per tower.
        image_size: input resolution (pixels, square).
        patch_size: ViT patch size (``image_size`` must be a multiple).
        projection_dim: embedding dimension.
        max_seq_length: token cap of the text tower.
        seed: initialisation seed (same seed, same weights).

    Returns:
        A ``SentenceTransformer`` (Transformer + Normalize) on the CPU.

    Example:
        >>> from PIL import Image
        >>> model = make_tiny_clip()
        >>> model.encode(["a red square"]).shape, model.encode([Image.new("RGB", (40, 40), "red")]).shape
        ((1, 32), (1, 32))
    """
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPProcessor

    from hardbatch.embed.models import DEFAULT_MODEL, resolve_model_path

    if image_size % patch_size:
        raise ConfigError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(DEFAULT_MODEL)), local_files_only=True)
    heads = max(1, hidden_size // 16)
    config = CLIPConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads,
            "max_position_embeddings": max(512, max_seq_length),
            # CLIP pools at the first end-of-text token; with the BERT tokenizer that is [SEP].
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
        },
        vision_config={
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = CLIPModel(config)
    processor = CLIPProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer)
    with tempfile.TemporaryDirectory(prefix="hardbatch-tiny-clip-") as tmp:
        # sentence-transformers builds its Transformer module from a directory; the weights are read into
        # memory, so the folder can go right away.
        backbone.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        return load_clip(tmp, max_seq_length=max_seq_length)


def _image_processor(image_size: int) -> Any:
    import transformers

    # The PIL backend avoids a torchvision dependency (transformers picks it anyway without torchvision).
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def load_clip(path: str | os.PathLike[str], *, max_seq_length: int | None = None, device: str | None = "cpu"):
    """Load a local CLIP-style checkpoint as a ``SentenceTransformer`` that L2-normalises its output.

    Args:
        path: a saved sentence-transformers model, or a plain Hugging Face directory
            (``CLIPModel.save_pretrained`` + ``CLIPProcessor.save_pretrained``; SigLIP and other models
            sentence-transformers recognises as image–text work too).
        max_seq_length: token cap of the text tower.
        device: where to put it.

    Raises:
        ConfigError: the path does not exist or the model takes no images.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

    from hardbatch.embed.encode import check_takes_images

    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(f"CLIP model '{path}' is not a local directory; hardbatch never downloads models")
    if (folder / "modules.json").exists():
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    else:
        module = Transformer(str(folder), max_seq_length=max_seq_length)
        model = SentenceTransformer(modules=[module], device=device)
    check_takes_images(model)
    ensure_normalized(model)
    if max_seq_length is not None:
        model.max_seq_length = int(max_seq_length)
    return cap_max_seq_length(model)


def ensure_normalized(model: Any) -> Any:
    """Append a ``Normalize`` module unless the model already ends with one (the InfoNCE loss takes dot
    products, so an un-normalised CLIP head would train on unbounded logits)."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    modules = list(model)
    if not modules or not isinstance(modules[-1], Normalize):
        model.append(Normalize())
    return model


def cap_max_seq_length(model: Any) -> Any:
    """Lower ``max_seq_length`` to the text tower's position table (77 for OpenAI CLIP): a longer cap,
    e.g. the CLI's default 128, would index past the position embeddings on a long text."""
    backbone = _clip_backbone(model)
    config = getattr(getattr(backbone, "config", None), "text_config", None)
    positions = getattr(config, "max_position_embeddings", None)
    current = getattr(model, "max_seq_length", None)
    if positions is not None and (current is None or current > positions):
        model.max_seq_length = int(positions)
    return model


# ---------------------------------------------------------------------------------------------- towers
def _clip_backbone(model: Any) -> Any:
    for module in model.modules():
        if hasattr(module, "text_model") and hasattr(module, "vision_model"):
            return module
    return None


def tower_parameters(model: Any, tower: str) -> Iterator[Any]:
    """Parameters of one tower of a CLIP-style model (``"text"`` or ``"image"``).

    Hugging Face CLIP/SigLIP: ``text_model`` (+ ``text_projection``) or ``vision_model``
    (+ ``visual_projection``). OpenCLIP (:mod:`hardbatch.embed.openclip`): ``visual`` for the image tower,
    every other parameter except ``logit_scale``/``logit_bias`` for the text tower.

    Raises:
        ConfigError: unknown tower, or the model has no recognisable towers.
    """
    if tower not in TOWERS:
        raise ConfigError(f"tower must be one of {', '.join(TOWERS)}, got {tower!r}")
    backbone = _clip_backbone(model)
    if backbone is not None:
        parts = (
            ("text_model", "text_projection") if tower == "text" else ("vision_model", "visual_projection")
        )
        for name in parts:
            part = getattr(backbone, name, None)
            if part is not None:
                yield from part.parameters()
        return
    for module in model.modules():
        clip = getattr(module, "clip", None)
        if clip is not None and hasattr(clip, "visual"):  # OpenCLIP wrapper
            visual = {id(p) for p in clip.visual.parameters()}
            for name, param in clip.named_parameters():
                if (tower == "image" and id(param) in visual) or (
                    tower == "text" and id(param) not in visual and not name.startswith("logit_")
                ):
                    yield param
            return
    raise ConfigError(
        f"cannot find the {tower} tower of {type(model).__name__}; freezing a tower needs a CLIP-style "
        "image-text model (Hugging Face CLIP/SigLIP through sentence-transformers, or OpenCLIP)"
    )


def freeze_tower(model: Any, tower: str | None) -> int:
    """Freeze one tower (``requires_grad=False``), LiT-style; return how many parameters were frozen.

    ``None`` freezes nothing. The optimiser then skips the frozen tower and the gradient cache replays
    it without building a graph for it.

    Example:
        >>> model = make_tiny_clip()
        >>> freeze_tower(model, "text") > 0, all(p.requires_grad for p in tower_parameters(model, "image"))
        (True, True)
    """
    if tower is None:
        return 0
    frozen = 0
    for param in tower_parameters(model, tower):
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen
