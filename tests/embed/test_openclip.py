"""OpenCLIP through a local checkpoint (extra ``openclip``); the round trip skips without open_clip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from hardbatch.errors import MissingExtraError

HAS_OPENCLIP = importlib.util.find_spec("open_clip") is not None


@pytest.mark.skipif(HAS_OPENCLIP, reason="open_clip is installed")
def test_missing_extra_names_it(tmp_path):
    from hardbatch.embed.openclip import load_openclip

    with pytest.raises(MissingExtraError, match="openclip"):
        load_openclip("ViT-B-32", tmp_path / "weights.safetensors")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPENCLIP, reason="needs the openclip extra (open-clip-torch)")
def test_openclip_round_trip_and_towers(tmp_path):
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file

    from hardbatch.embed import freeze_tower, load_model
    from hardbatch.embed.clip import tower_parameters
    from hardbatch.embed.openclip import load_openclip
    from hardbatch.errors import ConfigError

    random_model = open_clip.create_model("ViT-B-32")
    weights = tmp_path / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in random_model.state_dict().items()}, str(weights))
    model = load_openclip("ViT-B-32", weights)
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    texts, pictures = model.encode(["a red square"]), model.encode(images)
    assert texts.shape[1] == pictures.shape[1]
    np.testing.assert_allclose(np.linalg.norm(pictures, axis=1), 1.0, rtol=1e-5)
    model.save(str(tmp_path / "saved"))
    again = load_model(tmp_path / "saved", device="cpu")
    np.testing.assert_allclose(again.encode(images), pictures, atol=1e-5)
    assert freeze_tower(again, "image") == sum(p.numel() for p in tower_parameters(again, "image")) > 0
    with pytest.raises(ConfigError, match="not a local file"):
        load_openclip("ViT-B-32", tmp_path / "nope.pt")
