"""HardbatchInfoNCELoss equals sentence-transformers' MNRL (+ symmetric) and trains inside the ST trainer."""

from __future__ import annotations

import warnings

import pytest
import torch

from hardbatch.errors import ConfigError
from hardbatch.losses import HardbatchInfoNCELoss, info_nce

ANCHORS = ["how to sort a list", "read a csv file", "http get request", "parse json", "sort a list"]
POSITIVES = ["use sorted()", "pandas.read_csv", "requests.get(url)", "json.loads(text)", "use sorted()"]
NEGATIVES = ["open a socket", "write a csv file", "use sorted()", "yaml.safe_load", "list.append"]


def _embeddings(columns: int, b: int = 6, d: int = 10, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=gen, dtype=torch.float64).float() for _ in range(columns)]


def _value_and_grads(loss_fn, embeddings):
    leaves = [e.clone().requires_grad_() for e in embeddings]
    value = loss_fn(leaves)
    value.backward()
    return value.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("columns", [2, 4])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("scale", [20.0, 1.0])
def test_equals_multiple_negatives_ranking_loss(tiny_model, columns, symmetric, scale):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
    theirs = MultipleNegativesRankingLoss(
        tiny_model, scale=scale, directions=directions, partition_mode="per_direction"
    )
    ours = HardbatchInfoNCELoss(tiny_model, scale=scale, symmetric=symmetric, tile_size=(4, 5))
    embeddings = _embeddings(columns, seed=columns)
    want, want_grads = _value_and_grads(lambda e: theirs.compute_loss_from_embeddings(e, None), embeddings)
    got, got_grads = _value_and_grads(lambda e: ours.compute_loss_from_embeddings(e, None), embeddings)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_equals_deprecated_symmetric_ranking_loss(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesSymmetricRankingLoss

        theirs = MultipleNegativesSymmetricRankingLoss(tiny_model, scale=20.0)
    ours = HardbatchInfoNCELoss(tiny_model, scale=20.0, symmetric=True)
    embeddings = _embeddings(2, b=9, seed=3)
    want, want_grads = _value_and_grads(lambda e: theirs.compute_loss_from_embeddings(e, None), embeddings)
    got, got_grads = _value_and_grads(lambda e: ours.compute_loss_from_embeddings(e, None), embeddings)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_dot_similarity_and_config(tiny_model):
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    ours = HardbatchInfoNCELoss(tiny_model, scale=1.0, similarity_fct=util.dot_score)
    theirs = MultipleNegativesRankingLoss(tiny_model, scale=1.0, similarity_fct=util.dot_score)
    embeddings = _embeddings(3, seed=8)
    torch.testing.assert_close(
        ours.compute_loss_from_embeddings(embeddings), theirs.compute_loss_from_embeddings(embeddings, None)
    )
    config = ours.get_config_dict()
    assert config["similarity_fct"] == "dot" and config["scale"] == 1.0
    assert "2410.17243" in ours.citation
    with pytest.raises(ConfigError, match="similarity_fct"):
        HardbatchInfoNCELoss(tiny_model, similarity_fct="manhattan")
    assert config["distributed"] == "auto"
    ring = HardbatchInfoNCELoss(tiny_model, distributed="ring")
    assert ring.get_config_dict()["distributed"] == "ring"
    # The mode reaches info_nce (checked there even without a process group).
    with pytest.raises(ConfigError, match="distributed"):
        HardbatchInfoNCELoss(tiny_model, distributed="allgather").compute_loss_from_embeddings(embeddings)


@pytest.fixture
def eval_model(tiny_model):
    """The session tiny model without dropout (direct and cached forwards must agree), restored afterwards."""
    was_training = tiny_model.training
    tiny_model.eval()
    yield tiny_model
    tiny_model.zero_grad(set_to_none=True)
    tiny_model.train(was_training)


def test_cached_equals_direct_and_masks_duplicates(eval_model):
    tiny_model = eval_model
    features = [tiny_model.tokenize(texts) for texts in (ANCHORS, POSITIVES, NEGATIVES)]
    grads = []
    for mini_batch_size in (None, 2):
        tiny_model.zero_grad(set_to_none=True)
        loss = HardbatchInfoNCELoss(tiny_model, mini_batch_size=mini_batch_size, symmetric=True)
        value = loss(features, None)
        value.backward()
        grads.append(
            (
                value.detach(),
                {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None},
            )
        )
    (direct, direct_grads), (cached, cached_grads) = grads
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-6)
    for name, grad in direct_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)
    tiny_model.zero_grad(set_to_none=True)

    # Duplicate positive "use sorted()" (rows 0 and 4, and negative 2) is masked for those anchors.
    with torch.no_grad():
        embeddings = [tiny_model(f)["sentence_embedding"] for f in features]
        masked = HardbatchInfoNCELoss(tiny_model, mask_duplicates=True)(features, None)
    q = torch.nn.functional.normalize(embeddings[0], dim=-1)
    keys = torch.nn.functional.normalize(torch.cat(embeddings[1:]), dim=-1)
    dup = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 2, 3, 0, 10, 11, 0, 12, 13])
    want = info_nce(q, keys, torch.arange(5), scale=20.0, symmetric=False, query_ids=dup[0], key_ids=dup[1])
    torch.testing.assert_close(masked, want, rtol=1e-5, atol=1e-6)
    assert masked < info_nce(q, keys, torch.arange(5), scale=20.0, symmetric=False)


def test_trains_in_sentence_transformer_trainer(tiny_model, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    dataset = Dataset.from_dict({"anchor": ANCHORS[:4], "positive": POSITIVES[:4], "negative": NEGATIVES[:4]})
    loss = HardbatchInfoNCELoss(tiny_model, mini_batch_size=2, symmetric=True)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    was_training = tiny_model.training
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = SentenceTransformerTrainer(model=tiny_model, args=args, train_dataset=dataset, loss=loss)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in tiny_model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "one optimiser step must move the encoder weights"
    with torch.no_grad():  # restore the session fixture for other tests
        for name, param in tiny_model.named_parameters():
            param.copy_(before[name])
    tiny_model.zero_grad(set_to_none=True)
    tiny_model.train(was_training)
