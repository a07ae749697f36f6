"""encode_texts: order restoration, deduplication, settings restored, bad input and bad model output."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from hardbatch.embed import encode_texts
from hardbatch.errors import ConfigError, DataError


class HashEncoder:
    """A stand-in model: deterministic vectors from each text's hash; records the batches it was given."""

    training = False

    def __init__(self, dim: int = 6, nan_for: str | None = None) -> None:
        self.dim = dim
        self.nan_for = nan_for
        self.batches: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)

    def encode(self, texts, **kwargs):
        self.batches.append(list(texts))
        out = np.stack([self.vector(t) for t in texts])
        if self.nan_for is not None:
            out[[t == self.nan_for for t in texts]] = np.nan
        return out


def test_order_is_restored_and_batches_go_longest_first():
    texts = [f"text {'x' * (i * 7 % 23)} {i}" for i in range(50)]
    encoder = HashEncoder()
    result = encode_texts(texts, encoder, batch_size=8, show_progress=False)
    assert result.dtype == np.float32 and result.shape == (50, 6)
    np.testing.assert_array_equal(result, np.stack([encoder.vector(t) for t in texts]))
    lengths = [len(t) for batch in encoder.batches for t in batch]
    assert lengths == sorted(lengths, reverse=True)
    assert [len(b) for b in encoder.batches] == [8] * 6 + [2]


def test_duplicate_texts_are_encoded_once_and_share_a_row():
    encoder = HashEncoder()
    texts = ["a", "bb", "a", "ccc", "bb", "a"]
    result = encode_texts(texts, encoder, batch_size=2, show_progress=False)
    assert sum(len(b) for b in encoder.batches) == 3
    np.testing.assert_array_equal(result[0], result[2])
    np.testing.assert_array_equal(result[1], result[4])
    np.testing.assert_array_equal(result[3], encoder.vector("ccc"))


def test_nan_output_names_the_text_row():
    with pytest.raises(DataError, match=r"text row 2 \('boom'\)"):
        encode_texts(["fine", "ok", "boom", "boom"], HashEncoder(nan_for="boom"), show_progress=False)


@pytest.mark.parametrize(
    ("texts", "kwargs", "error", "message"),
    [
        ([], {}, DataError, "no texts"),
        ("a single string", {}, DataError, "single string"),
        (["a", 3], {}, DataError, "row 1 is int"),
        (["a"], {"batch_size": 0}, ConfigError, "batch_size must be a positive integer"),
        (["a"], {"max_seq_length": -1}, ConfigError, "max_seq_length"),
    ],
)
def test_bad_arguments(texts, kwargs, error, message):
    with pytest.raises(error, match=message):
        encode_texts(texts, HashEncoder(), show_progress=False, **kwargs)


def test_bad_model_argument():
    with pytest.raises(ConfigError, match="model must be a SentenceTransformer"):
        encode_texts(["a"], object(), show_progress=False)


def test_real_tiny_model_matches_its_own_encode_and_restores_settings(tiny_model):
    texts = ["def add(a, b): return a + b", "sum", "open a file and read all of its lines into a list", "x"]
    tiny_model.train()
    before = tiny_model.max_seq_length
    ours = encode_texts(texts, tiny_model, batch_size=2, device="cpu", show_progress=False)
    assert tiny_model.training, "a model being trained must get its training mode back"
    assert tiny_model.max_seq_length == before
    reference = np.stack(
        [tiny_model.encode([t], convert_to_numpy=True, normalize_embeddings=True)[0] for t in texts]
    )
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    truncated = encode_texts(texts, tiny_model, max_seq_length=4, device="cpu", show_progress=False)
    assert tiny_model.max_seq_length == before
    np.testing.assert_allclose(truncated[3], ours[3], atol=1e-5)  # "x" fits in 4 tokens
    assert not np.allclose(truncated[2], ours[2], atol=1e-4)  # the long text was cut
    tiny_model.eval()
