"""``hardbatch mine ...``: offline batch mining into a batch plan.

``hardbatch mine b3 DATA -o plan.parquet`` mines B3 clusters; ``hardbatch mine gcbs DATA -o plan.parquet``
runs one GCBS refresh with a fixed teacher. Both plans carry their input hashes, so ``train`` and
``inspect`` detect a plan of other data.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hardbatch.app.cli.options import (
    ExampleBatchSize,
    Exchange,
    KeyBlockSize,
    MemoryBudget,
    PlanOutput,
    TeacherDevice,
    key_block_option,
)
from hardbatch.app.cli.output import check_output_file
from hardbatch.app.cli.teacher import EmbDir, PositiveEmb, QueryEmb, TeacherMaxSeqLength, teacher_embeddings

console = Console()

mine_app = typer.Typer(
    name="mine",
    help="Mine hard batches offline (B3 clusters of mutual hard negatives) into a batch plan.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(mine_app, name="mine")


def parse_per_source(text: str, default: int | None, name: str) -> int | dict[str, int]:
    """``"30"`` → 30; ``"web=30,vqa=70"`` (+ ``default``) → ``{"web": 30, "vqa": 70, "*": default}``.

    Example:
        >>> parse_per_source("web=30,vqa=70", 30, "skip")
        {'web': 30, 'vqa': 70, '*': 30}
    """
    from hardbatch.errors import ConfigError

    text = text.strip()
    if "=" not in text:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"--{name} expects an integer or SOURCE=INT,..., got {text!r}") from None
        return value
    mapping: dict[str, int] = {}
    for item in text.split(","):
        source, _, value = item.partition("=")
        try:
            mapping[source.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--{name}: {item!r} is not SOURCE=INT") from None
    if default is not None:
        mapping["*"] = int(default)
    return mapping


def _explicit(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line, environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    # By name: typer may ship its own copy of click's ParameterSource enum.
    return getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")


@mine_app.command("b3")
def mine_b3_command(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Argument(
            help="Pair data (.jsonl/.json/.csv/.parquet or codesearch:<split>). Optional when both "
            "--query-emb and --positive-emb are given."
        ),
    ] = None,
    out: PlanOutput = Path("plan.parquet"),
    teacher: Annotated[
        str,
        typer.Option("--teacher", "-t", help="'default' (packaged all-MiniLM-L6-v2) or a model directory."),
    ] = "default",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="|B|, a multiple of K.")] = 64,
    cluster_size: Annotated[int, typer.Option("--cluster-size", "-k", help="K, examples per cluster.")] = 32,
    skip: Annotated[
        str,
        typer.Option(
            "--skip",
            help="p: top teacher ranks skipped (likely false negatives); an integer or per source, "
            "e.g. web=30,vqa=70 (with --skip-default for the other sources).",
        ),
    ] = "30",
    skip_default: Annotated[
        int | None, typer.Option("--skip-default", help="p of the sources --skip does not name.")
    ] = None,
    window: Annotated[
        str, typer.Option("--window", help="m: ranks kept after the skipped ones; an integer or per source.")
    ] = "100",
    window_default: Annotated[
        int | None, typer.Option("--window-default", help="m of the sources --window does not name.")
    ] = None,
    count_self: Annotated[
        bool,
        typer.Option(
            "--count-self/--exclude-self",
            help="p counts the example itself as rank 0 (the paper's count) / p counts other examples only.",
        ),
    ] = True,
    classification: Annotated[
        str | None,
        typer.Option(
            "--classification",
            help="Sources whose positives are class labels (comma-separated, or 'all'): label-level graph.",
        ),
    ] = None,
    label_fraction: Annotated[
        float, typer.Option("--label-fraction", help="Classification: share of labels linked per example.")
    ] = 0.3,
    community: Annotated[
        str,
        typer.Option(
            "--community",
            help="metis (recursive bisection) | metis-kway (one k-way call, as the official code) | leiden | "
            "louvain; then exact-K repair.",
        ),
    ] = "metis",
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="b3-paper: K=32, p=30 (70 for VQA sources), m=100, batch 1024, for options not given.",
        ),
    ] = None,
    query_prompt: Annotated[
        str | None,
        typer.Option(
            "--query-prompt", help="Teacher prompt for queries (default: the teacher's 'query' prompt)."
        ),
    ] = None,
    document_prompt: Annotated[
        str | None,
        typer.Option(
            "--document-prompt",
            help="Teacher prompt for positives (default: the teacher's 'document' prompt).",
        ),
    ] = None,
    vqa_sources: Annotated[
        str | None,
        typer.Option(
            "--vqa-sources",
            help="With --preset: sources mined with p=70 (comma-separated; default: names containing 'vqa').",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="METIS / repair / shuffle seed.")] = 0,
    knn: Annotated[
        str,
        typer.Option(
            "--knn",
            help="exact | ivf_torch (grouped IVF at matmul speed, for 1M+) | hnsw | ivf (faiss); all but exact "
            "are approximate, with their window recall printed.",
        ),
    ] = "exact",
    precision: Annotated[
        str, typer.Option("--precision", help="Exact kNN matmul: auto (bf16 where fast) | fp32 | bf16.")
    ] = "auto",
    recall_target: Annotated[
        float,
        typer.Option("--recall-target", help="Window recall the approximate search effort is tuned to."),
    ] = 0.95,
    key_block_size: KeyBlockSize = None,
    memory_budget: MemoryBudget = None,
    exchange: Exchange = "read",
    shard_size: Annotated[
        int | None,
        typer.Option(
            "--shard-size",
            help="Hierarchical mode (10M+): coarse shards of at most this size, B3 in each (under torchrun "
            "the shards are spread over the ranks).",
        ),
    ] = None,
    query_emb: QueryEmb = None,
    positive_emb: PositiveEmb = None,
    emb_dir: EmbDir = None,
    per_source: Annotated[
        bool,
        typer.Option("--per-source/--global", help="Mine each source separately when the data has sources."),
    ] = True,
    same_source: Annotated[
        bool, typer.Option("--same-source/--mix-sources", help="Keep each batch within one source.")
    ] = True,
    filter_same_text: Annotated[
        bool,
        typer.Option(
            "--filter-same-text/--keep-same-text", help="Drop candidates whose positive text is i's."
        ),
    ] = True,
    absolute_margin: Annotated[
        float | None, typer.Option("--absolute-margin", help="Drop candidates scoring > pos - margin.")
    ] = None,
    relative_margin: Annotated[
        float | None, typer.Option("--relative-margin", help="Drop candidates scoring > pos · (1 - margin).")
    ] = None,
    max_score: Annotated[
        float | None, typer.Option("--max-score", help="Drop candidates scoring above.")
    ] = None,
    store_window: Annotated[
        bool, typer.Option("--store-window/--no-store-window", help="Keep the rank window (B3++, inspect).")
    ] = True,
    device: TeacherDevice = "auto",
    embed_batch_size: Annotated[int, typer.Option("--embed-batch-size", help="Texts per forward pass.")] = 64,
    max_seq_length: TeacherMaxSeqLength = None,
) -> None:
    """Mine B3 batches: teacher ranks → rank-window mutual graph → METIS clusters of K → batch plan.

    Under ``torchrun --nproc-per-node W -m hardbatch mine b3 ...`` (WORLD_SIZE > 1) the teacher ranking is
    split over the W ranks (gloo on CPU, NCCL with CUDA devices), or with ``--shard-size`` the hierarchical
    shards are, and rank 0 writes the plan once. Every rank
    memory-maps --query-emb/--positive-emb when given; otherwise each rank encodes its share of the pairs
    with the teacher and the shares are exchanged (rank 0 writes the embedding cache).
    """
    from hardbatch.errors import ConfigError
    from hardbatch.mining import mine_b3
    from hardbatch.mining.b3 import check_key_blocks

    check_output_file(out)  # before minutes of embedding and mining
    # Malformed or contradictory key-block options too (a budget's fit is checked once N and d are known).
    check_key_blocks({"key_block_size": key_block_option(key_block_size), "memory_budget": memory_budget,
                      "knn": knn})  # fmt: skip
    _check_exchange(exchange, shard_size)
    if shard_size is not None:  # hierarchical: under torchrun the shards are spread over the ranks
        from hardbatch.mining.hierarchical import mine_b3_hierarchical

        hierarchical = mine_b3_hierarchical
        if _world_size() > 1:
            hierarchical = _distributed(device, "mine_b3_hierarchical_distributed")
        mine_b3 = partial(hierarchical, shard_size=shard_size)
    elif _world_size() > 1:
        mine_b3 = partial(_distributed(device, "mine_b3_distributed"), exchange=exchange)

    started = time.perf_counter()
    timings: dict[str, float] = {}
    if (query_emb is None) != (positive_emb is None):
        raise ConfigError("give both --query-emb and --positive-emb, or neither")
    dataset = None
    if data is not None:
        from hardbatch.data import load_pairs

        dataset = load_pairs(data)
        timings["load data"] = time.perf_counter() - started
    step = time.perf_counter()
    teacher_emb = teacher_embeddings(
        dataset, teacher, query_emb=query_emb, positive_emb=positive_emb, emb_dir=emb_dir,
        max_seq_length=max_seq_length, batch_size=embed_batch_size, device=device,
        query_prompt=query_prompt, document_prompt=document_prompt,
    )  # fmt: skip
    query, positive = teacher_emb.query, teacher_emb.positive
    emb_paths = (teacher_emb.query_path, teacher_emb.positive_path)
    timings["embeddings"] = time.perf_counter() - step

    sources = dataset.sources if (dataset is not None and per_source) else None
    texts = dataset.positives if (dataset is not None and (filter_same_text or classification)) else None
    per_source_skip = parse_per_source(skip, skip_default, "skip")
    per_source_window = parse_per_source(window, window_default, "window")
    labels: Any = False
    if classification:
        labels = True if classification == "all" else [s.strip() for s in classification.split(",")]
    if preset is not None:
        from hardbatch.mining.presets import paper_skip
        from hardbatch.mining.presets import preset as preset_settings
        from hardbatch.mining.presets import vqa_sources as find_vqa

        settings = preset_settings(preset)
        names = sorted(set(sources)) if sources is not None else []
        vqa = [v.strip() for v in vqa_sources.split(",")] if vqa_sources else find_vqa(names)
        if vqa:
            console.print(f"preset {preset}: p={settings['vqa_skip']} for {', '.join(vqa)}")
        if not _explicit(ctx, "skip"):
            per_source_skip = paper_skip(vqa, settings)
        if not _explicit(ctx, "window"):
            per_source_window = int(settings["window"])
        if not _explicit(ctx, "cluster_size"):
            cluster_size = int(settings["cluster_size"])
        if not _explicit(ctx, "batch_size"):
            batch_size = int(settings["global_batch"])
        if not _explicit(ctx, "community"):
            community = str(settings["community"])
    step = time.perf_counter()
    plan = mine_b3(
        query,
        positive,
        batch_size=batch_size,
        cluster_size=cluster_size,
        skip=per_source_skip,
        window=per_source_window,
        count_self=count_self,
        seed=seed,
        knn=knn,
        precision=precision,
        recall_target=recall_target,
        key_block_size=key_block_option(key_block_size),
        memory_budget=memory_budget,
        sources=sources,
        same_source=same_source,
        positive_texts=texts,
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
        max_score=max_score,
        device=device,
        store_window=store_window,
        dataset_hash=dataset.fingerprint if dataset is not None else None,
        classification=labels,
        label_fraction=label_fraction,
        community=community,
    )
    if plan is None:  # a distributed rank other than 0: rank 0 writes the plan
        return
    if preset is not None:
        plan.params["preset"] = preset
    plan.params["teacher"] = teacher if query_emb is None else "user embeddings"
    if query_emb is None:
        from hardbatch.embed.prompts import model_prompts

        prompts = model_prompts(teacher, query_prompt, document_prompt)
        plan.params["prompts"] = {"query": prompts[0], "document": prompts[1]}
    timings["mine"] = time.perf_counter() - step
    step = time.perf_counter()
    path = plan.save(out)
    timings["save"] = time.perf_counter() - step
    _print_summary(plan, path, emb_paths, timings, time.perf_counter() - started)


def _world_size() -> int:
    """The world size torchrun announces (``WORLD_SIZE``), 1 outside torchrun."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _leave_group() -> None:
    """Destroy the process group this command joined, before the interpreter's own teardown.

    A gloo group left to static destructors can abort its process ("terminate called without an active
    exception", SIGABRT) when the peer is still connected: a rank that has nothing left to do (the other
    ranks return as soon as rank 0 has the results) then fails the whole torchrun job after a good run.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _check_exchange(exchange: str, shard_size: int | None) -> None:
    """``--exchange``: a known value, and not with hierarchical shards (a shard's positives never travel)."""
    from hardbatch.errors import ConfigError
    from hardbatch.mining.distributed import check_exchange

    check_exchange(exchange)
    if exchange != "read" and shard_size is not None:
        raise ConfigError(
            "--exchange ring applies to flat mining; with --shard-size each rank reads its own shards"
        )


def _distributed(device: str, name: str):
    """A :mod:`hardbatch.mining.distributed` miner over the torchrun world.

    Joins the default group once (NCCL with one CUDA device per rank, gloo otherwise) before the teacher
    embeddings are computed, so the ranks can share that work too.
    """
    import os

    import torch
    import torch.distributed as dist

    from hardbatch.mining import distributed

    if not dist.is_initialized():
        import atexit

        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_leave_group)
    miner = getattr(distributed, name)

    def run(*args, **kwargs):
        if kwargs.get("device") == "auto" and torch.cuda.is_available():
            kwargs["device"] = f"cuda:{torch.cuda.current_device()}"
        return miner(*args, **kwargs)

    return run


def _print_summary(
    plan, path: Path, emb_paths: tuple[Path, Path], timings: dict[str, float], total: float
) -> None:
    stats = plan.stats
    stages = Table(title="B3 mining stages")
    for column in ("stage", "seconds", "peak RSS (MiB)"):
        stages.add_column(column, justify="right" if column != "stage" else "left")
    for name, seconds in timings.items():
        stages.add_row(name, f"{seconds:.2f}", "")
    for name, values in stats["stages"].items():
        stages.add_row(f"  mine: {name}", f"{values['seconds']:.2f}", f"{values['peak_rss_mb']:.0f}")
    stages.add_row("total", f"{total:.2f}", f"{stats['peak_rss_mb']:.0f}")
    console.print(stages)

    graph, part, hardness = stats["graph"], stats["partition"], stats["hardness"]
    summary = Table(title="batch plan", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    rows = [
        ("examples", f"{plan.num_examples:,}"),
        ("clusters × K", f"{plan.num_clusters:,} × {plan.cluster_size}"),
        ("remainder (N mod K)", f"{plan.remainder.size:,}"),
        ("batches / epoch", f"{plan.num_batches():,} of {plan.batch_size}"),
        ("sources", ", ".join(plan.source_names) if plan.source_names else "—"),
        ("directed → mutual edges", f"{graph['directed_edges']:,} → {graph['mutual_edges']:,}"),
        ("isolated nodes", f"{graph['isolated_nodes']:,}"),
        ("METIS cut / after repair", f"{part.get('metis_cut', 0):,} / {part.get('cut', 0):,}"),
        ("within-cluster edges", f"{part.get('within_edge_fraction', 0.0):.1%}"),
        (
            "teacher sim in cluster vs random",
            f"{hardness['cluster_mean_sim']:.3f} vs {hardness['random_mean_sim']:.3f}",
        ),
    ]
    if "knn_recall" in stats:
        rows.append(("approximate kNN recall", f"{stats['knn_recall']:.3f}"))
    if "knn_window_recall" in stats:
        rows.append(("window recall [p, p+m)", f"{stats['knn_window_recall']:.3f}"))
    rows += _ivf_rows(stats)
    if "knn_window_hardness" in stats:
        rows.append(("window hardness vs exact (1 = as hard)", f"{stats['knn_window_hardness']:.3f}"))
    if "coarse_window_recall" in stats:  # hierarchical: the flat windows the shards keep
        coarse = stats["coarse_window_recall"]
        rows.append(
            (
                "flat window kept by the shards",
                f"{coarse['window_recall']:.3f} (in shard: {coarse['shard_coverage']:.3f}, "
                f"{coarse['sample']} examples)",
            )
        )
    rows += [("embeddings", f"{emb_paths[0]}, {emb_paths[1]}"), ("plan", str(path))]
    for field, value in rows:
        summary.add_row(field, value)
    console.print(summary)


def _ivf_rows(stats: dict) -> list[tuple[str, str]]:
    """Summary rows of a plan's grouped IVF searches (one per source group searched): probes, lists (and
    the list counts tried) and the fraction of the products computed; none for other searches."""
    infos = stats.get("knn_info")
    infos = [info for info in (infos if isinstance(infos, list) else [infos]) if isinstance(info, dict)]
    infos = [info for info in infos if info.get("index") == "ivf_torch"]
    rows = []
    for number, info in enumerate(infos, start=1):
        tried = [step["nlist"] for step in info.get("nlist_tries", [])]
        lists = f"{info['nlist']:,} lists" + (
            f" (tried {', '.join(map(str, tried))})" if len(tried) > 1 else ""
        )
        searched = (
            "exact search" if info.get("exact_fallback") else f"{info['searched_fraction']:.1%} of products"
        )
        field = "IVF search" + (f" (group {number})" if len(infos) > 1 else "")
        rows.append((field, f"nprobe {info['nprobe']:,} of {lists}: {searched}"))
    return rows


@mine_app.command("gcbs")
def mine_gcbs_command(
    data: Annotated[
        str, typer.Argument(help="Pair data (.jsonl/.json/.csv/.parquet or codesearch:<split>).")
    ],
    out: PlanOutput = Path("gcbs.parquet"),
    teacher: Annotated[
        str, typer.Option("--teacher", "-t", help="'default' or a model directory.")
    ] = "default",
    batch_size: ExampleBatchSize = 64,
    quantile: Annotated[
        float | None, typer.Option("--quantile", help="Similarity quantile (default 0.999).")
    ] = None,
    target_degree: Annotated[
        float | None, typer.Option("--target-degree", help="Instead of --quantile: edges per example.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the quantile sample and RCM tie-breaking.")
    ] = 0,
    device: TeacherDevice = "auto",
    graph_method: Annotated[
        str,
        typer.Option(
            "--graph-method",
            help="'exact' similarity pass, 'ivf_torch' (grouped IVF at matmul speed, approximate; large N) "
            "or 'ivf' (faiss range search, approximate).",
        ),
    ] = "exact",
    nlist: Annotated[
        int | None,
        typer.Option("--nlist", help="IVF lists (default: about sqrt(N) for ivf_torch, 4·sqrt(N) for ivf)."),
    ] = None,
    nprobe: Annotated[
        int | None,
        typer.Option(
            "--nprobe", help="IVF lists searched per example (default: calibrated for ivf_torch, 32 for ivf)."
        ),
    ] = None,
    recall_target: Annotated[
        float,
        typer.Option("--recall-target", help="Edge recall the ivf_torch search effort is calibrated to."),
    ] = 0.95,
    precision: Annotated[
        str, typer.Option("--precision", help="Exact graph matmul: auto (bf16 where fast) | fp32 | bf16.")
    ] = "auto",
    key_block_size: KeyBlockSize = None,
    memory_budget: MemoryBudget = None,
    exchange: Exchange = "read",
    query_emb: QueryEmb = None,
    positive_emb: PositiveEmb = None,
    emb_dir: EmbDir = None,
    max_seq_length: TeacherMaxSeqLength = None,
) -> None:
    """GCBS with a fixed teacher: threshold graph → RCM → batches, saved as a batch plan (batch order reshuffled per epoch).

    Under ``torchrun --nproc-per-node W -m hardbatch mine gcbs ...`` (WORLD_SIZE > 1) the teacher embeddings
    and the threshold graph are split over the W ranks and rank 0 writes the plan once.
    """
    from hardbatch.data import load_pairs
    from hardbatch.graph.budget import check_key_block_options
    from hardbatch.mining.gcbs import mine_gcbs

    check_output_file(out)
    check_key_block_options(key_block_option(key_block_size), memory_budget)  # before embedding
    _check_exchange(exchange, None)
    if _world_size() > 1:
        mine_gcbs = partial(_distributed(device, "mine_gcbs_distributed"), exchange=exchange)
    started = time.perf_counter()
    dataset = load_pairs(data)
    teacher_emb = teacher_embeddings(
        dataset, teacher, query_emb=query_emb, positive_emb=positive_emb, emb_dir=emb_dir,
        max_seq_length=max_seq_length, device=device,
    )  # fmt: skip
    query, positive = teacher_emb.query, teacher_emb.positive
    result = mine_gcbs(
        query, positive, batch_size, quantile=quantile, target_degree=target_degree, seed=seed, device=device,
        graph_method=graph_method, nlist=nlist, nprobe=nprobe, recall_target=recall_target, precision=precision,
        key_block_size=key_block_option(key_block_size), memory_budget=memory_budget,
        dataset_hash=dataset.fingerprint,
    )  # fmt: skip
    if result is None:  # a distributed rank other than 0: rank 0 writes the plan
        return
    result.to_plan(params={"teacher": teacher, "data": data}).save(out)
    s = result.stats
    table = Table(title="GCBS")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("num_examples", "quantile", "threshold", "edges", "degree_mean", "degree_max", "components",
                "giant_component_fraction", "bandwidth_before", "bandwidth_after", "same_batch_edge_fraction"):  # fmt: skip
        value = s[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    if "key_block_size" in s:
        table.add_row("key_block_size × key_blocks", f"{s['key_block_size']} × {s['key_blocks']}")
    for stage, value in result.seconds.items():
        table.add_row(f"{stage} (s)", f"{value['seconds']:.2f}")
    console.print(table)
    console.print(
        f"[green]mined[/] {len(result.batches)} GCBS batches in {time.perf_counter() - started:.1f} s → {out}"
    )
