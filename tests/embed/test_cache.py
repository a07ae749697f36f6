"""Embedding caches: reused when valid, rebuilt when stale, written atomically; load_embeddings checks."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import hardbatch.embed.encode as encode_module
from hardbatch.embed import embed_pairs, encode_texts, load_embeddings, model_fingerprint, sidecar_path
from hardbatch.errors import DataError, StaleCacheError

TEXTS = ["binary search in a sorted list", "def bisect(a, x): ...", "parse a json file", "json.load(f)"]


def _forbid_model_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded although a valid cache exists")

    monkeypatch.setattr(encode_module, "resolve_encoder", fail)


def test_cache_roundtrip_sidecar_and_reuse_without_loading_the_model(tmp_path, tiny_model_dir, monkeypatch):
    cache = tmp_path / "emb" / "texts.npy"
    first = encode_texts(TEXTS, str(tiny_model_dir), cache_path=cache, device="cpu", show_progress=False)
    assert isinstance(first, np.memmap) and first.dtype == np.float32 and first.shape == (4, 32)
    meta = json.loads(sidecar_path(cache).read_text())
    assert meta["model_id"] == str(tiny_model_dir.resolve())
    assert meta["num_texts"] == 4 and meta["normalize"] is True and meta["max_seq_length"] is None
    assert meta["shape"] == [4, 32]
    assert sorted(p.name for p in cache.parent.iterdir()) == ["texts.meta.json", "texts.npy"]

    _forbid_model_loading(monkeypatch)
    again = encode_texts(TEXTS, str(tiny_model_dir), cache_path=cache, device="cpu", show_progress=False)
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"texts": [*TEXTS[:3], "something else"]}, "texts_sha256"),
        ({"max_seq_length": 8}, "max_seq_length"),
        ({"normalize": False}, "normalize"),
    ],
)
def test_stale_cache_is_detected_and_rebuilt(tmp_path, tiny_model_dir, tiny_model, change, field):
    cache = tmp_path / "texts.npy"
    kwargs = {"cache_path": cache, "device": "cpu", "show_progress": False}
    encode_texts(TEXTS, str(tiny_model_dir), **kwargs)
    change = dict(change)
    texts = change.pop("texts", TEXTS)
    with pytest.raises(StaleCacheError, match=field):
        encode_texts(texts, str(tiny_model_dir), on_stale="error", **change, **kwargs)
    rebuilt = encode_texts(texts, str(tiny_model_dir), **change, **kwargs)
    fresh = encode_texts(texts, tiny_model, show_progress=False, **change)  # same weights, no reload
    np.testing.assert_allclose(rebuilt, fresh, atol=1e-6)
    meta = json.loads(sidecar_path(cache).read_text())
    assert meta["texts_sha256"] != "" and meta["num_texts"] == len(texts)


def test_changed_model_files_or_weights_make_the_cache_stale(tmp_path, tiny_model_dir, tiny_model):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    cache = tmp_path / "texts.npy"
    encode_texts(TEXTS, str(model_dir), cache_path=cache, device="cpu", show_progress=False)
    config = model_dir / "sentence_bert_config.json"
    settings = json.loads(config.read_text())
    settings["max_seq_length"] = 7
    config.write_text(json.dumps(settings))
    with pytest.raises(StaleCacheError, match="model_fingerprint"):
        encode_texts(TEXTS, str(model_dir), cache_path=cache, on_stale="error", show_progress=False)

    instance_cache = tmp_path / "instance.npy"
    encode_texts(TEXTS, tiny_model, cache_path=instance_cache, show_progress=False)
    before = model_fingerprint(tiny_model)["fingerprint"]
    param = next(tiny_model.parameters())
    original = param.data.clone()
    try:
        param.data[0, 0] += 1.0
        assert model_fingerprint(tiny_model)["fingerprint"] != before
        with pytest.raises(StaleCacheError, match="model_fingerprint"):
            encode_texts(TEXTS, tiny_model, cache_path=instance_cache, on_stale="error", show_progress=False)
    finally:
        param.data.copy_(original)
    assert model_fingerprint(tiny_model)["fingerprint"] == before


def test_array_without_sidecar_is_never_trusted(tmp_path, tiny_model_dir):
    cache = tmp_path / "texts.npy"
    np.save(cache, np.zeros((4, 32), dtype=np.float32))
    with pytest.raises(StaleCacheError, match="no sidecar"):
        encode_texts(TEXTS, str(tiny_model_dir), cache_path=cache, on_stale="error", show_progress=False)
    rebuilt = encode_texts(TEXTS, str(tiny_model_dir), cache_path=cache, show_progress=False)
    assert np.abs(rebuilt).sum() > 0


def test_crash_while_encoding_keeps_the_old_cache_and_leaves_no_temporary_files(tmp_path, tiny_model_dir):
    cache = tmp_path / "texts.npy"
    old = np.array(encode_texts(TEXTS, str(tiny_model_dir), cache_path=cache, show_progress=False))

    class Exploding:
        training = False

        def encode(self, *args, **kwargs):
            raise RuntimeError("out of memory")

        def state_dict(self):
            return {}

        def __iter__(self):
            return iter(())

    with pytest.raises(RuntimeError, match="out of memory"):
        encode_texts(TEXTS, Exploding(), cache_path=cache, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.meta.json", "texts.npy"]
    again = encode_texts(TEXTS, str(tiny_model_dir), cache_path=cache, on_stale="error", show_progress=False)
    np.testing.assert_array_equal(again, old)


def test_embed_pairs_writes_both_columns_and_reuses_them(tmp_path, tiny_model_dir, monkeypatch):
    pairs = SimpleNamespace(queries=TEXTS[::2], positives=TEXTS[1::2])
    out = embed_pairs(pairs, str(tiny_model_dir), tmp_path / "emb", batch_size=1, show_progress=False)
    assert out.query.shape == out.positive.shape == (2, 32) and len(out) == 2 and out.dim == 32
    assert out.query_path.name == "query.npy" and out.positive_path.exists()
    _forbid_model_loading(monkeypatch)
    monkeypatch.setattr("hardbatch.embed.pairs.resolve_encoder", encode_module.resolve_encoder)
    again = embed_pairs(pairs, str(tiny_model_dir), tmp_path / "emb", show_progress=False)
    np.testing.assert_array_equal(again.positive, out.positive)


def test_load_embeddings_checks(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((5, 3)))  # float64 is accepted and converted
    loaded = load_embeddings(good, rows=5, dim=3)
    assert loaded.dtype == np.float32 and loaded.shape == (5, 3)

    bad = np.ones((5, 3), dtype=np.float32)
    bad[3, 1] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    (tmp_path / "text.npy").write_text("not an array")
    np.save(tmp_path / "int.npy", np.ones((5, 3), dtype=np.int64))
    np.save(tmp_path / "flat.npy", np.ones(5, dtype=np.float32))
    cases = [
        (tmp_path / "inf.npy", {}, "inf.npy: row 3 contains NaN or inf"),
        (good, {"rows": 6}, "expected 6 rows"),
        (good, {"dim": 4}, "expected dimension 4"),
        (tmp_path / "text.npy", {}, "not a readable .npy file"),
        (tmp_path / "int.npy", {}, "floating-point"),
        (tmp_path / "flat.npy", {}, "2-D"),
        (tmp_path / "missing.npy", {}, "not found"),
    ]
    for path, kwargs, message in cases:
        with pytest.raises(DataError, match=message):
            load_embeddings(path, **kwargs)
