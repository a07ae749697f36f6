from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from hardbatch.embed import embed_pairs, encode_texts
from hardbatch.embed.models import make_tiny_model
from hardbatch.embed.prompts import model_prompts, set_model_prompts, with_prompt
from hardbatch.evaluate import model_eval
from hardbatch.train.collate import PairCollator


@pytest.fixture
def tiny_model():
    return make_tiny_model()  # a fresh one: these tests set prompts on it


def _Pairs():
    return SimpleNamespace(
        queries=["add two numbers", "read a file"], positives=["def add(a, b)", "def read(path)"]
    )


def test_prompts_follow_the_sentence_transformers_convention(tiny_model, tmp_path):
    set_model_prompts(tiny_model, "query: ", "passage: ")
    assert tiny_model.prompts["query"] == "query: " and model_prompts(tiny_model) == ("query: ", "passage: ")
    assert model_prompts(tiny_model, "", None) == ("", "passage: ")  # explicit "" switches one off
    tiny_model.save(str(tmp_path / "saved"))
    assert model_prompts(str(tmp_path / "saved")) == ("query: ", "passage: ")  # read without loading
    assert model_prompts("no-such-model") == ("", "")


def test_teacher_embedding_uses_the_prompts(tiny_model, tmp_path):
    set_model_prompts(tiny_model, "query: ", "passage: ")
    emb = embed_pairs(_Pairs(), tiny_model, tmp_path / "a", show_progress=False)
    expected = encode_texts(with_prompt(_Pairs().queries, "query: "), tiny_model, show_progress=False)
    assert np.allclose(emb.query, expected, atol=1e-5)
    plain = embed_pairs(_Pairs(), tiny_model, tmp_path / "a", query_prompt="", show_progress=False)
    assert not np.allclose(plain.query, emb.query)  # same cache dir: the prompt is part of the cache key


def test_collator_and_evaluation_prepend_the_prompts(tiny_model, monkeypatch):
    seen: list[list[str]] = []

    def tokenize(texts):
        seen.append(list(texts))
        return tiny_model.tokenize(texts)

    collate = PairCollator(tokenize, query_prompt="q: ", document_prompt="d: ")
    collate([{"query": "x", "positive": "y"}], batch_negatives=["z"])
    assert seen == [["q: x"], ["d: y", "d: z"]]

    captured = {}

    def fake_evaluate_texts(model, queries, corpus, relevant, **kwargs):
        captured.update(queries=queries, corpus=corpus)
        raise StopIteration

    monkeypatch.setattr(model_eval, "evaluate_texts", fake_evaluate_texts)
    set_model_prompts(tiny_model, "query: ", "passage: ")
    with contextlib.suppress(StopIteration):
        model_eval.evaluate_model(tiny_model, _Pairs())
    assert captured["queries"][0] == "query: add two numbers"
    assert all(text.startswith("passage: ") for text in captured["corpus"])
