"""``hardbatch data ...``: validate/convert pair files and build the built-in codesearch corpus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hardbatch.errors import ConfigError

data_app = typer.Typer(
    help="Pair datasets: validate, convert, build the codesearch corpus.", no_args_is_help=True
)
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _label(package: str) -> str:
    from hardbatch.data.codesearch import package_label

    return package_label(package)


def _parse_map(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    mapping = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--map expects COLUMN=CANONICAL (e.g. question=query), got {item!r}")
        column, canonical = item.split("=", 1)
        mapping[column.strip()] = canonical.strip()
    return mapping


MAP_HELP = "Column mapping COLUMN=CANONICAL (canonical: query, positive, negatives, id, source); repeatable."


@data_app.command("validate")
def validate(
    file: Annotated[
        str,
        typer.Argument(
            help="A .jsonl/.json/.csv/.tsv/.parquet pair file (or codesearch:<split>, emoji:<split>)."
        ),
    ],
    map_: Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)] = None,
    drop_duplicates: Annotated[
        bool, typer.Option("--drop-duplicates", help="Drop exact duplicate pairs first.")
    ] = False,
) -> None:
    """Check a pair file; print counts, or the first error (file, line/row, field) with exit status 2."""
    from hardbatch.data import load_pairs

    started = time.perf_counter()
    dataset = load_pairs(file, column_map=_parse_map(map_), drop_duplicates=drop_duplicates)
    seconds = time.perf_counter() - started
    table = Table(title=f"{file}: valid", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("pairs", str(len(dataset)))
    table.add_row("duplicate (query, positive) pairs", str(len(dataset.duplicate_pair_rows())))
    table.add_row("distinct queries", str(len(set(dataset.queries))))
    table.add_row("distinct positives", str(len(set(dataset.positives))))
    if dataset.negatives is not None:
        counts = [len(row) for row in dataset.negatives]
        table.add_row(
            "negatives per pair (min/mean/max)",
            f"{min(counts)} / {sum(counts) / len(counts):.2f} / {max(counts)}",
        )
    else:
        table.add_row("negatives", "none")
    auto_ids = dataset.ids[0] == "row-0" and all(i == f"row-{k}" for k, i in enumerate(dataset.ids))
    table.add_row("ids", "auto (row-<i>)" if auto_ids else "from data")
    if dataset.sources is not None:
        table.add_row("sources", str(len(set(dataset.sources))))
    texts_q = [v for v in dataset.queries if type(v) is str]
    texts_p = [v for v in dataset.positives if type(v) is str]
    mean_q = sum(map(len, texts_q)) / max(1, len(texts_q))
    mean_p = sum(map(len, texts_p)) / max(1, len(texts_p))
    table.add_row("mean characters (query / positive)", f"{mean_q:.0f} / {mean_p:.0f}")
    if len(texts_q) < len(dataset) or len(texts_p) < len(dataset) or dataset.has_images:
        images_q, images_p = len(dataset) - len(texts_q), len(dataset) - len(texts_p)
        table.add_row("images (query / positive / negatives)", f"{images_q} / {images_p} / "
                      f"{sum(type(v) is not str for row in dataset.negatives or [] for v in row)}")  # fmt: skip
    table.add_row("fingerprint", dataset.fingerprint[:16])
    table.add_row("seconds", f"{seconds:.2f}")
    console.print(table)


@data_app.command("convert")
def convert(
    source: Annotated[
        str, typer.Argument(help="Input pair file (any supported format) or codesearch:<split>.")
    ],
    target: Annotated[
        Path, typer.Argument(help="Output file; format from the extension (.parquet/.jsonl/.json/.csv).")
    ],
    map_: Annotated[list[str] | None, typer.Option("--map", help=MAP_HELP)] = None,
    drop_duplicates: Annotated[
        bool, typer.Option("--drop-duplicates", help="Drop exact duplicate pairs.")
    ] = False,
) -> None:
    """Validate a pair file and write it in another format (atomically)."""
    from hardbatch.app.cli.output import check_output_file
    from hardbatch.data import load_pairs

    check_output_file(target, "TARGET")
    started = time.perf_counter()
    dataset = load_pairs(source, column_map=_parse_map(map_), drop_duplicates=drop_duplicates)
    path = dataset.save(target)
    console.print(f"wrote {len(dataset)} pairs to [bold]{path}[/] in {time.perf_counter() - started:.2f} s")


@data_app.command("codesearch")
def codesearch(
    out_dir: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (default: the hardbatch cache).")
    ] = None,
    packages: str = typer.Option(
        None, "--packages", "-p", help="Comma-separated packages ('stdlib', import names or directories)."
    ),
    max_pairs: int = typer.Option(None, "--max-pairs", help="Stop after this many pairs (fast builds)."),
    mask_name: bool = typer.Option(True, "--mask-name/--no-mask-name", help="Replace the function's name."),
    mask_token: str = typer.Option("FUNC", "--mask-token", help="Identifier replacing the function's name."),
    split: str = typer.Option("0.8,0.1,0.1", "--split", help="train,dev,test fractions of modules."),
    min_query_words: int = typer.Option(
        5, "--min-query-words", help="Minimum words in the docstring summary."
    ),
    min_code_lines: int = typer.Option(3, "--min-code-lines", help="Minimum code lines in the function."),
    workers: int = typer.Option(None, "--workers", "-j", help="Parsing processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the existing build is up to date."),
) -> None:
    """Build the codesearch corpus (docstring summary -> function source), split by module."""
    from hardbatch.data.cache import build_codesearch, codesearch_cache_dir
    from hardbatch.data.codesearch import DEFAULT_PACKAGES, SPLITS, CodeSearchConfig

    try:
        fractions = tuple(float(x) for x in split.split(","))
    except ValueError as exc:
        raise ConfigError(f"--split expects three comma-separated numbers, got {split!r}") from exc
    config = CodeSearchConfig(
        packages=tuple(p.strip() for p in packages.split(",") if p.strip()) if packages else DEFAULT_PACKAGES,
        mask_name=mask_name,
        mask_token=mask_token,
        min_query_words=min_query_words,
        min_code_lines=min_code_lines,
        split_fractions=fractions,  # type: ignore[arg-type]
        max_pairs=max_pairs,
    )
    out = out_dir if out_dir is not None else codesearch_cache_dir(None, config)
    started = time.perf_counter()
    build = build_codesearch(out, config, force=force, workers=workers)
    seconds = time.perf_counter() - started

    status = f"built ({build.reason})" if build.rebuilt else "up to date, reused"
    table = Table(title=f"codesearch: {status}")
    for column in ("package", "version", "files", "skipped", "pairs", *SPLITS):
        table.add_column(column, justify="left" if column in ("package", "version") else "right")
    totals = dict.fromkeys(("files", "skipped", "kept", *SPLITS), 0)
    order = [_label(p) for p in build.params.get("packages", [])] or list(build.stats)
    for package in order:
        stats = build.stats.get(package, {})
        skipped = stats.get("unreadable", 0) + stats.get("unparsable", 0)
        values = {"files": stats.get("files", 0), "skipped": skipped, "kept": stats.get("kept", 0)}
        values.update({s: stats.get(s, 0) for s in SPLITS})
        for key in totals:
            totals[key] += values[key]
        table.add_row(package, build.versions.get(package, "?"), *(str(values[k]) for k in totals))
    table.add_section()
    table.add_row("total", "", *(str(totals[k]) for k in totals), style="bold")
    console.print(table)
    for note in build.notes:
        console.print(f"note: {note}")
    if build.rebuilt:
        console.print(f"extraction {build.seconds:.1f} s, command {seconds:.1f} s")
    else:
        console.print(
            f"check {seconds:.1f} s (the cached build took {build.seconds:.1f} s; --force rebuilds)"
        )
    for name, path in build.paths.items():
        console.print(f"  {name:9s} {path}")
