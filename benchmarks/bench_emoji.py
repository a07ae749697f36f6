"""Headline on images: random vs B3 batches on the built-in ``emoji`` set, same batch size, >= 2 seeds.

Setting (tiny, for a loaded 2-core CPU; the numbers say little about CLIP at scale):

1. a *teacher*: ``make_tiny_clip(seed=100)`` trained with random batches on ``emoji:train``;
2. B3 plan mined from the teacher's embeddings (global, K = ``--cluster-size``, p = ``--skip``,
   m = ``--window``; candidates with the same positive image dropped);
3. per seed, two *students* from the same initialisation ``make_tiny_clip(seed=s)``: random batches and the
   B3 plan, identical optimiser, steps, batch size and CLIP (symmetric) loss;
4. evaluation on ``emoji:test`` (held-out emoji families) in both directions: text→image (query = name)
   and image→text (``reverse_*``).

Usage: python benchmarks/bench_emoji.py [--seeds 0,1] [--epochs 3] [--batch-size 32] [--image-size 32]
Writes benchmarks/results/emoji.json and emoji.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

from hardbatch.machine import describe_machine

RESULTS = Path(__file__).parent / "results"
METRICS = ("ndcg@10", "recall@1", "recall@10", "reverse_ndcg@10", "reverse_recall@1", "reverse_recall@10")


def machine() -> dict:
    info = describe_machine()
    return {**info, "threads": info["torch_threads"], "load_average_start": info["load_average_1m"]}


def make_lit(seed: int):
    """LiT-style student: the packaged all-MiniLM-L6-v2 as a frozen text backbone (its pooler and a new
    text projection stay trainable) and a tiny random ViT image tower, as a Hugging Face
    ``VisionTextDualEncoderModel`` that sentence-transformers loads like a CLIP."""
    import tempfile as _tempfile

    import torch
    import transformers
    from transformers import AutoTokenizer, BertModel, CLIPVisionConfig, CLIPVisionModel

    from hardbatch.embed import load_clip
    from hardbatch.embed.models import DEFAULT_MODEL, resolve_model_path

    path = str(resolve_model_path(DEFAULT_MODEL))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            )
        )
        model = transformers.VisionTextDualEncoderModel(
            vision_model=vision, text_model=BertModel.from_pretrained(path), config=None
        )
    size = {"shortest_edge": 32}
    processor = transformers.VisionTextDualEncoderProcessor(
        image_processor=transformers.CLIPImageProcessorPil(size=size, crop_size={"height": 32, "width": 32}),
        tokenizer=AutoTokenizer.from_pretrained(path),
    )
    with _tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        st = load_clip(tmp, max_seq_length=32)
    backbone = st[0].model
    for name, param in backbone.text_model.named_parameters():
        param.requires_grad_(name.startswith("pooler."))
    return st


def train_run(data, eval_data, model, sampler, plan, args, seed, out, save_final=False):
    from hardbatch.train import TrainConfig, train

    config = TrainConfig(
        data=data,
        eval_data=eval_data,
        output_dir=str(out),
        model=model,
        sampler=sampler,
        plan=None if plan is None else str(plan),
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        warmup_ratio=0.1,
        scale=args.scale,
        symmetric=True,
        seed=seed,
        max_seq_length=32,
        eval_batch_size=128,
        device="cpu",
        write_report=False,
        save_final=save_final,
        log_every=50,
    )
    started = time.perf_counter()
    result = train(config)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cluster-size", type=int, default=8)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument(
        "--max-pairs", type=int, default=None, help="Per split (whole families); default all."
    )
    parser.add_argument(
        "--model", choices=("tiny", "lit"), default="tiny", help="tiny CLIP, or LiT (frozen MiniLM text)."
    )
    args = parser.parse_args()

    import torch

    from hardbatch.data import load_pairs
    from hardbatch.embed import embed_pairs, load_model, make_tiny_clip
    from hardbatch.mining import mine_b3

    # One thread: a tiny model gains nothing from two, and two threads collapse on a loaded shared machine.
    torch.set_num_threads(1)
    info = machine()
    build = (lambda seed: make_tiny_clip(seed=seed)) if args.model == "tiny" else make_lit
    options = f"image_size={args.image_size}" + (f"&max_pairs={args.max_pairs}" if args.max_pairs else "")
    train_data = load_pairs(f"emoji:train?{options}")
    test_data = load_pairs(f"emoji:test?{options}")
    print(f"{train_data} / {test_data}; machine {info}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="hardbatch-emoji-bench-"))
    rows: list[dict] = []

    teacher_result, teacher_seconds = train_run(
        train_data, test_data, build(100), "random", None, args, 100, work / "teacher", True
    )
    teacher_model = load_model(teacher_result.final_model, device="cpu")
    rows.append({"run": "teacher (random batches)", "seed": 100, "steps": teacher_result.steps,
                 "seconds": round(teacher_seconds, 1), **{k: teacher_result.metrics.get(k) for k in METRICS}})  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)

    started = time.perf_counter()
    emb = embed_pairs(train_data, teacher_model, work / "teacher-emb", batch_size=128, show_progress=False)
    plan = mine_b3(
        emb.query,
        emb.positive,
        batch_size=args.batch_size,
        cluster_size=args.cluster_size,
        skip=args.skip,
        window=args.window,
        seed=0,
        positive_texts=train_data.positives,
        dataset_hash=train_data.fingerprint,
        device="cpu",
        show_progress=False,
    )
    plan_path = plan.save(work / "plan.parquet")
    mine_seconds = time.perf_counter() - started

    for seed in [int(s) for s in args.seeds.split(",")]:
        for sampler in ("random", "b3"):
            result, seconds = train_run(
                train_data,
                test_data,
                build(seed),
                sampler,
                plan_path if sampler == "b3" else None,
                args,
                seed,
                work / f"{sampler}-{seed}",
            )
            rows.append({"run": sampler, "seed": seed, "steps": result.steps, "seconds": round(seconds, 1),
                         **{k: result.metrics.get(k) for k in METRICS}})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)

    summary = {}
    for sampler in ("random", "b3"):
        runs = [r for r in rows if r["run"] == sampler]
        summary[sampler] = {
            k: {
                "mean": round(sum(r[k] for r in runs) / len(runs), 4),
                "min": round(min(r[k] for r in runs), 4),
                "max": round(max(r[k] for r in runs), 4),
            }
            for k in METRICS
        }
    result = {
        "machine": {**info, "load_average_end": round(os.getloadavg()[0], 1)},
        "params": vars(args),
        "data": {
            "train": len(train_data),
            "test": len(test_data),
            "train_fingerprint": train_data.fingerprint,
            "test_fingerprint": test_data.fingerprint,
        },
        "plan": {
            "params": {k: v for k, v in plan.params.items() if isinstance(v, int | float | str | bool)},
            "mine_seconds": round(mine_seconds, 1),
        },
        "rows": rows,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "emoji" if args.model == "tiny" else "emoji_lit"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    out = io.StringIO()
    m = result["machine"]
    p = result["params"]
    lit = p.get("model") == "lit"
    title = "LiT: frozen MiniLM text backbone + tiny ViT" if lit else "tiny CLIP"
    out.write(f"# Images: random vs B3 batches on emoji ({title}, CPU)\n\n")
    out.write(
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}; load average {m['load_average_start']} at "
        f"start, {m['load_average_end']} at end (shared machine: times are only comparable within this run).\n\n"
        f"Data: emoji:train {result['data']['train']} pairs, emoji:test {result['data']['test']} pairs "
        f"(held-out families), images {p['image_size']}×{p['image_size']}. Model: "
        + (
            "`make_lit()` in this script (all-MiniLM-L6-v2 frozen except its pooler, a new text projection, "
            "a random 2-layer ViT of width 64)"
            if lit
            else "`make_tiny_clip()` (random init, ~1M parameters)"
        )
        + f", CLIP loss (symmetric), scale {p['scale']}, AdamW lr {p['lr']}, "
        f"batch {p['batch_size']}, {p['epochs']} epochs. Teacher for B3: the same model trained with random "
        f"batches (seed 100); B3 K={p['cluster_size']}, p={p['skip']}, m={p['window']}.\n\n"
    )
    out.write(
        f"Chance level: recall@10 ≈ {10 / result['data']['test']:.4f} (10 of {result['data']['test']} test "
        "images or names). This is a pipeline check at toy scale, not a quality result: "
        + (
            "the image tower is random-initialised and tiny"
            if lit
            else "the models are random-initialised and tiny"
        )
        + ", the test families are unseen, and the B3 teacher is the same small model trained briefly; read "
        "the B3-vs-random gap only within this run and against the seed spread.\n\n"
    )
    out.write("| run | seed | seconds | " + " | ".join(METRICS) + " |\n")
    out.write("|---|---:|---:|" + "---:|" * len(METRICS) + "\n")
    for row in result["rows"]:
        values = " | ".join(f"{row[k]:.4f}" if row.get(k) is not None else "-" for k in METRICS)
        out.write(f"| {row['run']} | {row['seed']} | {row['seconds']} | {values} |\n")
    out.write("\nMean over seeds (min–max):\n\n| sampler | " + " | ".join(METRICS) + " |\n")
    out.write("|---|" + "---:|" * len(METRICS) + "\n")
    for sampler, stats in result["summary"].items():
        cells = " | ".join(f"{s['mean']:.4f} ({s['min']:.4f}–{s['max']:.4f})" for s in stats.values())
        out.write(f"| {sampler} | {cells} |\n")
    return out.getvalue()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--markdown-only"]:  # re-render <stem>.md from <stem>.json
        stem = sys.argv[2] if len(sys.argv) > 2 else "emoji"
        (RESULTS / f"{stem}.md").write_text(markdown(json.loads((RESULTS / f"{stem}.json").read_text())))
    else:
        main()
