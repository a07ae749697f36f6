from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hardbatch.data.images import ImageRef
from hardbatch.embed import encode_texts, freeze_tower, load_clip, load_model, make_tiny_clip
from hardbatch.embed.clip import tower_parameters
from hardbatch.errors import ConfigError


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip(seed=0)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(n)]


def test_tiny_clip_embeds_both_modalities_normalised(clip):
    texts = clip.encode(["a red square", "a blue circle"])
    images = clip.encode(_images(3))
    assert texts.shape == (2, 32) and images.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(images[0], images[1])  # the image tower sees the pixels
    assert set(clip.modalities) >= {"text", "image"}


def test_seed_fixes_the_weights():
    a, b, c = make_tiny_clip(seed=1), make_tiny_clip(seed=1), make_tiny_clip(seed=2)
    pa, pb, pc = (next(m[0].model.vision_model.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_save_load_round_trip(clip, tmp_path):
    images = _images(2, seed=3)
    texts = ["thumbs up", "red apple"]
    clip.save(str(tmp_path / "tiny-clip"))
    loaded = load_model(tmp_path / "tiny-clip", device="cpu")
    np.testing.assert_allclose(loaded.encode(texts), clip.encode(texts), atol=1e-6)
    np.testing.assert_allclose(loaded.encode(images), clip.encode(images), atol=1e-6)


def test_plain_hugging_face_directory_gets_normalised(clip, tmp_path):
    # What a user has after CLIPModel.save_pretrained + CLIPProcessor.save_pretrained: no ST config.
    backbone = clip[0].model
    backbone.save_pretrained(tmp_path / "hf")
    clip[0].processor.save_pretrained(tmp_path / "hf")
    loaded = load_clip(tmp_path / "hf")
    assert type(list(loaded)[-1]).__name__ == "Normalize"
    np.testing.assert_allclose(loaded.encode(["thumbs up"]), clip.encode(["thumbs up"]), atol=1e-6)
    # load_model (what train/evaluate/mine use for --model PATH) treats the folder the same way, and caps
    # the token limit at the text tower's position table.
    via_load_model = load_model(tmp_path / "hf", device="cpu", max_seq_length=1000)
    assert type(list(via_load_model)[-1]).__name__ == "Normalize"
    assert via_load_model.max_seq_length == backbone.config.text_config.max_position_embeddings
    np.testing.assert_allclose(via_load_model.encode(["thumbs up"]), clip.encode(["thumbs up"]), atol=1e-6)
    with pytest.raises(ConfigError, match="never downloads"):
        load_clip(tmp_path / "missing")


def test_encode_mixed_texts_and_images_keeps_row_order(clip, tmp_path):
    pictures = _images(3, seed=5)
    refs = []
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"{i}.png")
        refs.append(ImageRef(path=tmp_path / f"{i}.png"))
    values = [refs[0], "a text", refs[1], "another text", refs[2], refs[0]]
    mixed = encode_texts(values, clip, batch_size=2, show_progress=False)
    alone_images = clip.encode([r.load() for r in refs], normalize_embeddings=True)
    alone_texts = clip.encode(["a text", "another text"], normalize_embeddings=True)
    np.testing.assert_allclose(mixed[[0, 2, 4, 5]], alone_images[[0, 1, 2, 0]], atol=1e-5)
    np.testing.assert_allclose(mixed[[1, 3]], alone_texts, atol=1e-5)


def test_encode_caches_images_by_content(clip, tmp_path):
    picture = _images(1, seed=7)[0]
    picture.save(tmp_path / "a.png")
    cache = tmp_path / "emb.npy"
    first = encode_texts([ImageRef(path=tmp_path / "a.png")], clip, cache_path=cache, show_progress=False)
    _images(1, seed=8)[0].save(tmp_path / "a.png")  # same path, other pixels: the cache is stale
    second = encode_texts([ImageRef(path=tmp_path / "a.png")], clip, cache_path=cache, show_progress=False)
    assert not np.allclose(first, second)


def test_text_only_model_refuses_images(tiny_model, tmp_path):
    _images(1)[0].save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="takes only text"):
        encode_texts([ImageRef(path=tmp_path / "a.png")], tiny_model, show_progress=False)


def test_freeze_either_tower():
    model = make_tiny_clip(seed=0)
    frozen = freeze_tower(model, "image")
    vision = list(tower_parameters(model, "image"))
    assert frozen == sum(p.numel() for p in vision) > 0
    assert not any(p.requires_grad for p in vision)
    assert all(p.requires_grad for p in tower_parameters(model, "text"))
    assert freeze_tower(model, None) == 0
    with pytest.raises(ConfigError, match="tower must be"):
        freeze_tower(model, "audio")


def test_freeze_needs_an_image_text_model(tiny_model):
    with pytest.raises(ConfigError, match="cannot find the text tower"):
        freeze_tower(tiny_model, "text")


def test_token_cap_never_exceeds_the_position_table(clip):
    # 700 tokens > the tiny CLIP's 512 positions: an uncapped max_seq_length=1000 would index past them.
    long_text = "word " * 700
    vectors = encode_texts([long_text], clip, max_seq_length=1000, show_progress=False)
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()
