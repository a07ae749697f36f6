"""Fine-tune with sentence-transformers' own ``SentenceTransformerTrainer`` using hardbatch's B3 batch sampler
and tiled InfoNCE loss (library use, no ``hardbatch train``).

Steps: load pairs → embed them with a frozen teacher → mine a B3 plan → hand the sampler to the trainer as
``batch_sampler=B3BatchSampler.factory(plan=...)`` and the loss as ``HardbatchInfoNCELoss``
(``mini_batch_size`` turns on the gradient cache) → train → evaluate on the test split.

Run:  python examples/st_trainer_b3.py            (MiniLM, 1,024 codesearch pairs, a few minutes on a CPU)
      python examples/st_trainer_b3.py --tiny     (random tiny model, seconds; used by the tests)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model and data (seconds)")
    parser.add_argument("-o", "--output", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from hardbatch.data import load_pairs
    from hardbatch.embed import embed_pairs, load_model, make_tiny_model
    from hardbatch.evaluate import evaluate_model
    from hardbatch.losses import HardbatchInfoNCELoss
    from hardbatch.mining import mine_b3
    from hardbatch.samplers import B3BatchSampler

    out = Path(args.output or tempfile.mkdtemp(prefix="hardbatch-st-"))
    packages = "json,email,csv,logging,argparse,asyncio,http,xml" if args.tiny else "stdlib,numpy,scipy"
    train = load_pairs(f"codesearch:train?packages={packages}")
    test = load_pairs(f"codesearch:test?packages={packages}")
    n_train, batch_size, cluster_size = (128, 16, 4) if args.tiny else (1024, 32, 8)
    train = train.subset(range(n_train))

    # 1. The model to fine-tune; here the same (frozen) model is also the teacher for mining.
    model = make_tiny_model(max_seq_length=32) if args.tiny else load_model("default", max_seq_length=64)
    teacher = embed_pairs(train, model, out / "teacher", show_progress=False)

    # 2. B3: clusters of mutual hard negatives, batch_size / cluster_size clusters per batch.
    plan = mine_b3(
        teacher.query,
        teacher.positive,
        batch_size=batch_size,
        cluster_size=cluster_size,
        skip=1 if args.tiny else 3,
        window=8 if args.tiny else 30,
        positive_texts=train.positives,
        show_progress=False,
    )

    # 3. sentence-transformers trainer with our sampler (a factory) and our loss.
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st-run"),
        per_device_train_batch_size=batch_size,
        num_train_epochs=1,
        learning_rate=1e-3 if args.tiny else 5e-5,
        warmup_steps=0.1,  # a float is a ratio (transformers >= 5)
        batch_sampler=B3BatchSampler.factory(plan=plan),
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        seed=0,
    )
    loss = HardbatchInfoNCELoss(model, scale=20.0, mini_batch_size=batch_size // 2)
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=train.to_hf(), loss=loss
    )
    trainer.train()

    metrics = evaluate_model(model, test, show_progress=False)
    print({k: round(v, 4) for k, v in metrics.items()})
    model.save(str(out / "final"))
    return metrics


if __name__ == "__main__":
    main()
