"""Images through collate and the training step: mixed columns, gradient cache through both towers, LiT."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hardbatch.data import PairDataset
from hardbatch.data.images import ImageRef
from hardbatch.embed import freeze_tower, make_tiny_clip
from hardbatch.errors import DataError
from hardbatch.losses import reference_info_nce
from hardbatch.train.collate import MixedFeatures, PairCollator
from hardbatch.train.step import DualEncoder, StepRunner

SCALE = 10.0


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    refs = []
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        refs.append(ImageRef(path=folder / f"{i}.png"))
    return refs


@pytest.fixture(scope="module")
def mixed_rows(pictures):
    # Text→image, image→text and text→text rows in one batch; one negative per row, of both kinds.
    queries = ["a photo of noise", pictures[1], "third caption", pictures[3], "fifth caption"]
    positives = [pictures[0], "caption of image one", pictures[2], "caption three", pictures[4]]
    negatives = [[pictures[5]], ["a wrong caption"], [pictures[6]], ["another wrong one"], ["text neg"]]
    return PairDataset(queries, positives, negatives, name="mixed").to_records()


def _model():
    model = make_tiny_clip(seed=0)
    model.eval()  # CLIP has no dropout, but keep the reference deterministic anyway
    return model


def _runner(model, chunk=None, freeze=None):
    cfg = SimpleNamespace(scale=SCALE, symmetric=True, gradcache_chunk=chunk, freeze_tower=freeze)
    ctx = SimpleNamespace(group=None, device=torch.device("cpu"))
    return StepRunner(DualEncoder(model), cfg, ctx, None)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference(model, rows):
    """Embed every value on its own (no batching, no grouping), then the naive InfoNCE."""

    def embed(value):
        item = value.load() if isinstance(value, ImageRef) else value
        return model(model.preprocess([item]))["sentence_embedding"][0]

    model.zero_grad()
    query = torch.stack([embed(r["query"]) for r in rows])
    documents = [r["positive"] for r in rows] + [n for r in rows for n in r["negatives"]]
    key = torch.stack([embed(v) for v in documents])
    loss = reference_info_nce(query, key, scale=SCALE, symmetric=True)
    loss.backward()
    return float(loss.detach()), _grads(model)


def test_mixed_batch_matches_per_row_reference_direct_and_cached(mixed_rows):
    model = _model()
    batch = PairCollator(model.preprocess)(mixed_rows)
    assert isinstance(batch.query, MixedFeatures) and isinstance(batch.document, MixedFeatures)
    ref_loss, ref_grads = _reference(model, mixed_rows)
    for chunk in (None, 2):
        model.zero_grad()
        loss = _runner(model, chunk).step(batch)
        grads = _grads(model)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert set(grads) == set(ref_grads)
        assert any("vision_model" in n for n in grads) and any("text_model" in n for n in grads)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=2e-5, rtol=1e-3, msg=f"{name} (chunk={chunk})")


def test_frozen_text_tower_lit_style(mixed_rows):
    model = _model()
    batch = PairCollator(model.preprocess)(mixed_rows)
    model.zero_grad()
    _runner(model).step(batch)
    full = _grads(model)
    freeze_tower(model, "text")
    for chunk in (None, 3):
        model.zero_grad()
        _runner(model, chunk, freeze="text").step(batch)
        grads = _grads(model)
        assert grads and not any(n.split(".")[2].startswith("text") for n in grads)
        # The image tower's gradient does not depend on whether the text tower is trained.
        for name, grad in grads.items():
            torch.testing.assert_close(grad, full[name], atol=2e-5, rtol=1e-3, msg=f"{name} (chunk={chunk})")


def test_broken_image_in_a_batch_names_row_and_field(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = [{"query": "fine", "positive": ImageRef(path=bad), "id": "pair-7"}]
    collate = PairCollator(lambda values: {"n": len(values)})
    with pytest.raises(DataError, match=r"row id=pair-7: field 'positive': .*bad\.png"):
        collate(rows)


def test_freezing_the_only_modality_is_a_config_error():
    from hardbatch.errors import ConfigError
    from hardbatch.train.collate import TokenizedPairs

    features = {"input_ids": torch.ones(2, 3, dtype=torch.int64), "modality": "text"}
    batch = TokenizedPairs(dict(features), dict(features), 2, 0)
    runner = StepRunner(None, SimpleNamespace(freeze_tower="text", gradcache_chunk=None), None, None)
    with pytest.raises(ConfigError, match="nothing to train"):
        runner.step(batch)
