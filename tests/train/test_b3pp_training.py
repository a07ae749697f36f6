"""B3++ through the trainer: every step contrasts h·|B| mined negatives (h per example), never a batch
member or a member's likely false negative, and other negatives in the next epoch."""

from __future__ import annotations

import numpy as np

from hardbatch.mining import mine_b3
from hardbatch.train import TrainConfig, Trainer
from hardbatch.train.collate import PairCollator


def test_trainer_adds_h_negatives_per_example(train_pairs, tiny_model_dir, tmp_path, monkeypatch):
    n = len(train_pairs)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    plan = mine_b3(
        emb, emb, batch_size=8, cluster_size=4, skip=2, window=10, device="cpu", show_progress=False
    )
    seen: list[tuple[int, int, list[str], list[str]]] = []
    original = PairCollator.__call__

    def spy(self, rows, batch_negatives=None):
        batch = original(self, rows, batch_negatives)
        seen.append(
            (batch.num_queries, batch.num_extra, [r["positive"] for r in rows], list(batch_negatives))
        )
        return batch

    monkeypatch.setattr(PairCollator, "__call__", spy)
    config = TrainConfig(
        data=train_pairs, output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), sampler="b3",
        sampler_options={"plan": plan, "num_hard_negatives": 2}, batch_size=8, epochs=2, max_seq_length=16,
        eval_data=None, write_report=False, save_final=False,
    )  # fmt: skip
    trainer = Trainer(config)
    trainer.fit()
    per_epoch = len(trainer.sampler)
    assert len(seen) == 2 * per_epoch
    positives = list(train_pairs.positives)
    for queries, extra, batch_positives, negatives in seen:
        assert queries == 8 and extra == 2 * 8  # h per example, not h per batch
        members = [positives.index(p) for p in batch_positives]
        excluded = {positives[i] for i in plan.excluded_negatives(members)}
        assert not set(negatives) & excluded
    # Same plan, new epoch: the negatives are drawn again.
    assert [s[3] for s in seen[:per_epoch]] != [s[3] for s in seen[per_epoch:]]
