from __future__ import annotations

from hardbatch.embed.models import load_model
from hardbatch.embed.prompts import model_prompts
from hardbatch.train import TrainConfig, train
from hardbatch.train.collate import PairCollator


def test_prompts_reach_training_the_saved_model_and_the_run_record(
    train_pairs, tiny_model_dir, tmp_path, monkeypatch
):
    texts: list[str] = []
    original = PairCollator.__call__

    def spy(self, rows, batch_negatives=None):
        batch = original(self, rows, batch_negatives)
        texts.extend([self.query_prompt + rows[0]["query"], self.document_prompt + rows[0]["positive"]])
        return batch

    monkeypatch.setattr(PairCollator, "__call__", spy)
    result = train(
        TrainConfig(
            data=train_pairs, output_dir=str(tmp_path / "run"), model=str(tiny_model_dir), batch_size=8,
            max_steps=1, max_seq_length=16, eval_data=None, write_report=False,
            query_prompt="Represent the query: ", document_prompt="Represent the answer: ",
        )
    )  # fmt: skip
    assert texts[0].startswith("Represent the query: ") and texts[1].startswith("Represent the answer: ")
    assert result.summary["prompts"] == {
        "query": "Represent the query: ",
        "document": "Represent the answer: ",
    }
    assert model_prompts(load_model(result.final_model)) == (
        "Represent the query: ",
        "Represent the answer: ",
    )
    assert result.summary["train_pairs"] == len(train_pairs)
