"""``train`` shows one bar per epoch with loss, learning rate and pairs/s (rich, rank 0, on request)."""

from __future__ import annotations

import re

from hardbatch.progress import step_progress
from hardbatch.train import TrainConfig, train


def test_step_progress_shows_loss_lr_and_pairs_per_second(capsys):
    with step_progress("epoch 1/2", total=2, items_per_step=64, show=True) as bar:
        bar.advance(loss=1.25, lr=2e-5, seconds=0.5)
        bar.advance(loss=1.0, lr=1e-5, seconds=0.5)
    err = " ".join(capsys.readouterr().err.split())
    assert "epoch 1/2" in err and "2/2" in err
    assert "loss 1.0000" in err and "lr 1.00e-05" in err and "128 pairs/s" in err


def test_train_draws_a_bar_per_epoch_and_none_when_disabled(tmp_path, train_pairs, tiny_model_dir, capsys):
    settings = dict(data=train_pairs, eval_data=None, model=str(tiny_model_dir), batch_size=8, epochs=2,
                    max_seq_length=32, device="cpu", write_report=False)  # fmt: skip
    train(TrainConfig(output_dir=str(tmp_path / "a"), progress=True, **settings))
    err = " ".join(capsys.readouterr().err.split())
    assert "epoch 1/2" in err and "epoch 2/2" in err and "4/4" in err
    assert re.search(r"loss \d+\.\d{4} lr \d\.\d\de-\d\d [\d,]+ pairs/s", err)
    train(TrainConfig(output_dir=str(tmp_path / "b"), progress=False, **settings))
    assert "pairs/s" not in capsys.readouterr().err
