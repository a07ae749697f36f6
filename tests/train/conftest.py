from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and two threads collapse when other jobs load the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(n: int, offset: int = 0):
    from hardbatch.data import PairDataset

    verbs = ["compute", "parse", "read", "write", "sort", "merge", "split", "encode"]
    queries = [f"{verbs[i % 8]} the value number {i + offset} quickly" for i in range(n)]
    positives = [f"def {verbs[i % 8]}_{i + offset}(x):\n    return x * {i + offset}" for i in range(n)]
    sources = ["alpha" if i % 2 else "beta" for i in range(n)]
    return PairDataset(queries, positives, sources=sources, name=f"toy{offset}")


@pytest.fixture(scope="session")
def train_pairs():
    return _pairs(32)


@pytest.fixture(scope="session")
def eval_pairs():
    return _pairs(12, offset=1000)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny BERT saved to disk so runs can load it by path (--model PATH); dropout on."""
    from hardbatch.embed.models import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-model") / "model"
    make_tiny_model(seed=0, dropout=0.1, max_seq_length=32).save(str(path), create_model_card=False)
    return path


@pytest.fixture(scope="session")
def tiny_model_nodropout_dir(tmp_path_factory):
    """The same without dropout, for exact-equivalence checks (gradient cache, DDP vs one process)."""
    from hardbatch.embed.models import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-model-nodrop") / "model"
    make_tiny_model(seed=0, dropout=0.0, max_seq_length=32).save(str(path), create_model_card=False)
    return path


@pytest.fixture(scope="session")
def pairs_files(tmp_path_factory, train_pairs, eval_pairs):
    """The toy train/eval pairs as .jsonl files, for the command line."""
    root = tmp_path_factory.mktemp("pairs")
    paths = {}
    for name, ds in (("train", train_pairs), ("eval", eval_pairs)):
        path = root / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for row in ds:
                handle.write(json.dumps({k: row[k] for k in ("query", "positive", "id", "source")}) + "\n")
        paths[name] = path
    return paths
