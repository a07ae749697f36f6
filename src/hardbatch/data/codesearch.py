"""Built-in real dataset ``codesearch``: (docstring summary → function source) pairs harvested with ``ast``.

Every function or method with a docstring in the Python standard library and in installed packages becomes
one pair:

* **query** = the first paragraph of the docstring, whitespace-collapsed, at least ``min_query_words`` words;
* **positive** = the function's source (decorators and signature included, dedented) with the docstring
  removed and, by default, every occurrence of the function's own name replaced by ``mask_token`` (without
  masking, retrieval degenerates into matching the name that the docstring often repeats); at least
  ``min_code_lines`` non-blank, non-comment lines.

Exact-duplicate positives and duplicate queries are removed (first occurrence wins, in the deterministic
order: packages as configured, files sorted by path, functions in source order). Whole *modules* (one .py
file each) are assigned to train/dev/test by a hash of the dotted module path, so no module appears in two
splits and a module's split does not change when other packages are added. ``source`` is the package the
pair came from (``"stdlib"`` for the standard library), ``id`` is ``"<module>:<qualname>:<line>"``.

Cost: one parse per file, O(total source bytes) time; memory O(kept pairs) (about 60 MB of text for the
full default corpus). Files are parsed in a process pool when ``workers > 1``; results are consumed in
file order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import platform
import re
import sys
import sysconfig
import textwrap
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hardbatch.data.pairs import PairDataset
from hardbatch.errors import ConfigError
from hardbatch.progress import progress

__all__ = [
    "DEFAULT_PACKAGES",
    "EXTRACTOR_VERSION",
    "SPLITS",
    "CodeSearchConfig",
    "CodeSearchCorpus",
    "SourceFile",
    "assign_split",
    "discover_files",
    "extract_codesearch",
    "extract_pairs_from_source",
    "package_label",
    "package_versions",
]

# Bump when the extraction logic changes so caches built by older code are rebuilt.
EXTRACTOR_VERSION = 1
SPLITS = ("train", "dev", "test")
STDLIB = "stdlib"
DEFAULT_PACKAGES: tuple[str, ...] = (
    STDLIB,
    "numpy",
    "scipy",
    "torch",
    "transformers",
    "sentence_transformers",
    "sympy",
    "sklearn",
    "networkx",
    "huggingface_hub",
    "pip",
)

# Directories never walked: tests (their docstrings describe tests, not APIs), caches, and stdlib parts that
# are tooling or other installs rather than library code.
_SKIP_DIRS = {"__pycache__", "tests", "test", "site-packages", "dist-packages"}
_STDLIB_SKIP = {"idlelib", "turtledemo", "lib2to3", "ensurepip", "pydoc_data", "lib-dynload", "config"}
_TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")
# Import names whose distribution is named differently; checked before the slow full scan
# (importlib.metadata.packages_distributions reads every installed RECORD file, ~2 s).
_DIST_ALIASES = {"sklearn": "scikit-learn", "yaml": "PyYAML", "PIL": "pillow", "bs4": "beautifulsoup4"}
_STRING_PREFIXES = {"r", "u", "f", "b", "br", "rb", "fr", "rf"}


@dataclass(frozen=True)
class CodeSearchConfig:
    """Parameters of a codesearch build; all of them are recorded in the cache metadata.

    Args:
        packages: ``"stdlib"``, importable top-level package names, or directories of .py files written
            as paths (containing ``/`` or starting with ``.``/``~``; the directory name becomes the source
            label).
        mask_name: replace the function's own name in the positive by ``mask_token``.
        mask_token: the neutral identifier used for masking.
        min_query_words: minimum words in the docstring's first paragraph.
        min_code_lines: minimum non-blank, non-comment lines in the positive.
        split_fractions: (train, dev, test) fractions of modules by hash; roughly the fractions of pairs.
        max_pairs: stop after this many kept pairs (fast builds); ``None`` = all.
    """

    packages: tuple[str, ...] = DEFAULT_PACKAGES
    mask_name: bool = True
    mask_token: str = "FUNC"
    min_query_words: int = 5
    min_code_lines: int = 3
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_pairs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(str(p) for p in self.packages))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if not self.packages:
            raise ConfigError("codesearch: packages must name at least one package")
        fractions = self.split_fractions
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"codesearch: split_fractions must be three non-negative numbers summing to 1 "
                f"(train, dev, test), got {fractions}"
            )
        if not self.mask_token.isidentifier():
            raise ConfigError(f"codesearch: mask_token must be a Python identifier, got {self.mask_token!r}")
        if self.min_query_words < 1 or self.min_code_lines < 1:
            raise ConfigError("codesearch: min_query_words and min_code_lines must be >= 1")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"codesearch: max_pairs must be positive, got {self.max_pairs}")

    def params(self) -> dict[str, Any]:
        """JSON-able parameters (plus the extractor version) that identify a build."""
        params = asdict(self)
        params["packages"] = list(self.packages)
        params["split_fractions"] = list(self.split_fractions)
        params["extractor_version"] = EXTRACTOR_VERSION
        return params


@dataclass(frozen=True)
class SourceFile:
    """One .py file to parse: its package label, dotted module path and location on disk."""

    package: str
    module: str
    path: str


@dataclass
class CodeSearchCorpus:
    """The result of :func:`extract_codesearch`: one :class:`PairDataset` per split plus statistics."""

    splits: dict[str, PairDataset]
    modules: dict[str, list[str]]  # split -> module per pair (parallel to the split's rows)
    stats: dict[str, dict[str, int]]  # package -> counters (files, unparsable, kept, train, ...)
    versions: dict[str, str]
    params: dict[str, Any]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- discovery
def _is_path_spec(package: str) -> bool:
    # Only explicit paths count: a bare name is an import name even if a folder of that name is in the CWD.
    return os.sep in package or "/" in package or package.startswith(("~", "."))


def package_label(package: str) -> str:
    """The ``source`` label of a package spec: the name itself, or a directory's base name."""
    return Path(package).expanduser().resolve().name if _is_path_spec(package) else package


def _walk_py_files(root: Path) -> Iterator[Path]:
    """Yield .py files under ``root`` in sorted order, pruning test and cache directories."""
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py") and not _TEST_FILE.match(name):
                yield Path(current) / name


def _module_name(prefix: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([prefix, *parts]) if prefix else ".".join(parts)


def _stdlib_files() -> list[SourceFile]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[SourceFile] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith((".", "config-")) or name in _SKIP_DIRS or name in _STDLIB_SKIP:
            continue
        if entry.is_file() and name.endswith(".py") and not _TEST_FILE.match(name):
            found.append(SourceFile(STDLIB, entry.stem, str(entry)))
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.extend(
                SourceFile(STDLIB, _module_name("", root, path), str(path)) for path in _walk_py_files(entry)
            )
    return found


def _find_spec_without_importing(name: str) -> Any:
    """The import spec of ``name`` (dotted or not), found without importing any package.

    ``importlib.util.find_spec("a.b")`` imports ``a`` to read its ``__path__``, which runs ``a/__init__.py``
    (and ``torchrun -m`` puts the working directory on ``sys.path``, so ``a`` may be any folder there). We
    ask the finders for the top-level name only, then walk down the submodule search locations with
    :class:`importlib.machinery.PathFinder`, which only looks at the file system.
    """
    import importlib.machinery
    import importlib.util

    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level lookup imports nothing
    except (ImportError, ValueError):
        return None
    for depth in range(1, len(parts)):
        locations = None if spec is None else spec.submodule_search_locations
        if not locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), list(locations))
    return spec


def _installed_files(name: str) -> list[SourceFile] | None:
    """Files of an installed package (``pkg`` or ``pkg.sub``) found via its import spec, never imported."""
    spec = _find_spec_without_importing(name)
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        if spec.origin and spec.origin.endswith(".py"):
            return [SourceFile(name, name, spec.origin)]
        return []
    found: list[SourceFile] = []
    for location in sorted(locations):
        root = Path(location)
        found.extend(
            SourceFile(name, _module_name(name, root, path), str(path)) for path in _walk_py_files(root)
        )
    return found


def _directory_files(directory: str) -> list[SourceFile]:
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"codesearch: package directory {directory!r} does not exist")
    label = root.name
    return [SourceFile(label, _module_name(label, root, path), str(path)) for path in _walk_py_files(root)]


def discover_files(package: str) -> list[SourceFile] | None:
    """All .py files of one package spec in deterministic order; ``None`` when it is not installed.

    Example:
        >>> files = discover_files("json")
        >>> files[0].module, files[0].package
        ('json', 'json')
    """
    if package == STDLIB:
        return _stdlib_files()
    if _is_path_spec(package):
        return _directory_files(package)
    return _installed_files(package)


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Version string per package spec: distribution version, Python version for stdlib, content hash
    for directories, ``"not installed"`` when missing. Cheap for installed packages (metadata only)."""
    from importlib import metadata

    versions: dict[str, str] = {}
    dist_map: dict[str, list[str]] | None = None
    for package in packages:
        label = package_label(package)
        if package == STDLIB or package in getattr(sys, "stdlib_module_names", ()):
            versions[label] = f"{platform.python_implementation()} {platform.python_version()}"
        elif _is_path_spec(package):
            versions[label] = "sha256:" + _files_hash(_directory_files(package))
        else:
            version = _distribution_version(metadata, _DIST_ALIASES.get(package, package))
            if version is None:  # import name differs from the distribution name (sklearn -> scikit-learn)
                if dist_map is None:
                    dist_map = metadata.packages_distributions()  # scans every installed dist: only if needed
                for dist in dist_map.get(package, []):
                    version = _distribution_version(metadata, dist)
                    if version is not None:
                        break
            if version is None:
                files = _installed_files(package)
                version = "not installed" if files is None else "files:" + _files_hash(files, content=False)
            versions[label] = version
    return versions


def _distribution_version(metadata, name: str) -> str | None:
    """``"<published name> <version>"`` of an installed distribution, or ``None``."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return f"{dist.metadata['Name']} {dist.version}"


def _files_hash(files: list[SourceFile], content: bool = True) -> str:
    digest = hashlib.sha256()
    for item in files:
        digest.update(item.module.encode() + b"\0")
        path = Path(item.path)
        try:
            digest.update(path.read_bytes() if content else str(path.stat().st_size).encode())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- extraction
def _first_paragraph(docstring: str) -> str:
    cleaned = inspect.cleandoc(docstring).strip()
    paragraph = re.split(r"\n\s*\n", cleaned, maxsplit=1)[0]
    return " ".join(paragraph.split())


def _iter_functions(
    node: ast.AST, prefix: str = ""
) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
    """Functions and methods in source order with their qualified names (statements only, no expressions)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            qualname = prefix + child.name
            yield child, qualname
            yield from _iter_functions(child, qualname + ".<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _iter_functions(child, prefix + child.name + ".")
        elif isinstance(child, ast.stmt | ast.excepthandler) or type(child).__name__ == "match_case":
            yield from _iter_functions(child, prefix)


def _byte_slice(line: str, start: int | None = None, stop: int | None = None) -> str:
    # ast column offsets count UTF-8 bytes, not characters.
    return line.encode("utf-8")[start:stop].decode("utf-8", errors="ignore")


def _mask_pattern(name: str) -> re.Pattern[str]:
    # A name directly followed by a quote is a string prefix (f"..."), not the identifier.
    tail = r"(?![\w'\"])" if name.lower() in _STRING_PREFIXES else r"(?!\w)"
    return re.compile(r"(?<![\w])" + re.escape(name) + tail)


def _code_line_count(code: str) -> int:
    return sum(1 for line in code.split("\n") if line.strip() and not line.lstrip().startswith("#"))


def extract_pairs_from_source(
    text: str, config: CodeSearchConfig, counters: Counter | None = None
) -> list[tuple[str, str, str, int]]:
    """(query, positive, qualname, line) for every qualifying function in one file's source text.

    Raises ``SyntaxError``/``ValueError`` for unparsable text. ``counters`` (if given) counts why functions
    were skipped: ``functions``, ``documented``, ``short_query``, ``short_code``, ``layout``.

    Example:
        >>> src = 'def add(a, b):\\n    \"\"\"Add two numbers and return the sum.\"\"\"\\n    c = a + b\\n    return c\\n'
        >>> q, code, name, line = extract_pairs_from_source(src, CodeSearchConfig())[0]
        >>> q, code.splitlines()[0]
        ('Add two numbers and return the sum.', 'def FUNC(a, b):')
    """
    counters = Counter() if counters is None else counters
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # ast line numbers count these as one break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences etc. in third-party code
        tree = ast.parse(text)
    lines = text.split("\n")
    pairs: list[tuple[str, str, str, int]] = []
    for func, qualname in _iter_functions(tree):
        counters["functions"] += 1
        pair = _function_pair(func, lines, config, counters)
        if pair is not None:
            pairs.append((pair[0], pair[1], qualname, func.lineno))
    return pairs


def _function_pair(
    func: ast.FunctionDef | ast.AsyncFunctionDef,
    lines: list[str],
    config: CodeSearchConfig,
    counters: Counter,
) -> tuple[str, str] | None:
    body = func.body
    first = body[0] if body else None
    if not (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return None
    counters["documented"] += 1
    query = _first_paragraph(first.value.value)
    if len(query.split()) < config.min_query_words or query.startswith((">>>", "..")):
        counters["short_query"] += 1
        return None
    doc_start, doc_end = first.lineno, first.end_lineno or first.lineno
    before = _byte_slice(lines[doc_start - 1], None, first.col_offset)
    after = _byte_slice(lines[doc_end - 1], first.end_col_offset, None).strip()
    if len(body) < 2:  # nothing but the docstring
        counters["short_code"] += 1
        return None
    if before.strip() or (after and not after.startswith("#")):
        # The docstring shares a line with code: it cannot be cut out cleanly.
        counters["layout"] += 1
        return None
    start = min([func.lineno] + [d.lineno for d in func.decorator_list])
    end = func.end_lineno or func.lineno
    head = lines[start - 1 : doc_start - 1]
    rest = lines[doc_end:end]
    while rest and not rest[0].strip():
        rest = rest[1:]
    code = textwrap.dedent("\n".join(line.rstrip() for line in head + rest)).strip("\n")
    if config.mask_name:
        code = _mask_pattern(func.name).sub(config.mask_token, code)
    if _code_line_count(code) < config.min_code_lines:
        counters["short_code"] += 1
        return None
    return query, code


def _read_source(path: str) -> str:
    import tokenize

    with tokenize.open(path) as handle:  # honours PEP 263 encoding declarations
        return handle.read()


def _extract_file(
    task: tuple[SourceFile, CodeSearchConfig],
) -> tuple[str, list[tuple[str, str, str, int]], Counter]:
    """Worker: ("ok" | "unreadable" | "unparsable", pairs, counters) for one file."""
    source_file, config = task
    counters: Counter = Counter()
    try:
        text = _read_source(source_file.path)
    except (OSError, UnicodeDecodeError, SyntaxError, LookupError):
        return "unreadable", [], counters
    try:
        pairs = extract_pairs_from_source(text, config, counters)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "unparsable", [], counters
    return "ok", pairs, counters


def _map_files(
    tasks: list[tuple[SourceFile, CodeSearchConfig]], workers: int
) -> Iterator[tuple[str, list[tuple[str, str, str, int]], Counter]]:
    if workers <= 1 or len(tasks) < 64:
        yield from map(_extract_file, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork starts workers instantly; they only run ast, so inheriting torch's state is harmless.
    method = (
        "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" else "spawn"
    )
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    try:
        yield from executor.map(_extract_file, tasks, chunksize=16)  # ordered: output independent of workers
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- splitting
def assign_split(module: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Split of a module: a uniform number from the SHA-256 of its dotted path, cut at the fractions.

    Depends only on the module path, so adding packages never moves a module between splits.

    Example:
        >>> assign_split("json.decoder") in ("train", "dev", "test")
        True
    """
    value = int.from_bytes(hashlib.sha256(module.encode("utf-8")).digest()[:8], "big") / 2.0**64
    train, dev, _ = fractions
    if value < train:
        return "train"
    if value < train + dev:
        return "dev"
    return "test"


# ---------------------------------------------------------------------------------------------- driver
def extract_codesearch(
    config: CodeSearchConfig | None = None, *, workers: int | None = None, show_progress: bool | None = None
) -> CodeSearchCorpus:
    """Harvest, deduplicate and split the codesearch corpus in memory (see the module docstring).

    Args:
        config: build parameters (default: all :data:`DEFAULT_PACKAGES`, name masking on).
        workers: processes parsing files (default ``os.cpu_count()``); the result does not depend on it.
        show_progress: progress bar over files (default: on unless ``HARDBATCH_PROGRESS=0``).

    Returns:
        :class:`CodeSearchCorpus` with ``splits["train"|"dev"|"test"]`` as :class:`PairDataset`.

    Example:
        >>> corpus = extract_codesearch(CodeSearchConfig(packages=("json",)), workers=1, show_progress=False)
        >>> sum(len(ds) for ds in corpus.splits.values()) > 10
        True
    """
    import time

    config = config or CodeSearchConfig()
    started = time.perf_counter()
    workers = max(1, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    notes: list[str] = []
    files: list[SourceFile] = []
    stats: dict[str, dict[str, int]] = {}
    for package in config.packages:
        label = package_label(package)
        found = discover_files(package)
        if found is None:
            notes.append(f"package {package!r} is not installed; skipped")
            found = []
        if label in stats:
            raise ConfigError(f"codesearch: package {label!r} is listed twice")
        stats[label] = Counter(files=len(found))
        files.extend(found)

    seen_code: set[str] = set()
    seen_query: set[str] = set()
    rows: dict[str, dict[str, list[str]]] = {
        split: {"query": [], "positive": [], "id": [], "source": [], "module": []} for split in SPLITS
    }
    seen_ids: set[str] = set()
    kept = 0
    tasks = [(item, config) for item in files]
    results = _map_files(tasks, workers)
    try:
        for item, (status, pairs, counters) in progress(
            zip(files, results), "codesearch: parsing files", total=len(files), show=show_progress
        ):
            package_stats = stats[item.package]
            package_stats.update(counters)
            if status != "ok":
                package_stats[status] += 1
                continue
            for query, code, qualname, line in pairs:
                duplicate_code, duplicate_query = code in seen_code, query in seen_query
                seen_code.add(code)
                seen_query.add(query)
                if duplicate_code or duplicate_query:
                    package_stats["duplicate_code" if duplicate_code else "duplicate_query"] += 1
                    continue
                ident = f"{item.module}:{qualname}:{line}"
                while ident in seen_ids:  # two files mapping to one module name (rare): keep ids unique
                    ident += "+"
                seen_ids.add(ident)
                split = assign_split(item.module, config.split_fractions)
                target = rows[split]
                target["query"].append(query)
                target["positive"].append(code)
                target["id"].append(ident)
                target["source"].append(item.package)
                target["module"].append(item.module)
                package_stats["kept"] += 1
                package_stats[split] += 1
                kept += 1
                if config.max_pairs is not None and kept >= config.max_pairs:
                    break
            if config.max_pairs is not None and kept >= config.max_pairs:
                notes.append(f"stopped at max_pairs={config.max_pairs}")
                break
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()

    splits = {
        split: PairDataset(
            cols["query"],
            cols["positive"],
            None,
            cols["id"],
            cols["source"],
            name=f"codesearch-{split}",
            validate=False,
        )
        for split, cols in rows.items()
    }
    return CodeSearchCorpus(
        splits=splits,
        modules={split: cols["module"] for split, cols in rows.items()},
        stats={label: dict(counter) for label, counter in stats.items()},
        versions=package_versions(config.packages),
        params=config.params(),
        seconds=time.perf_counter() - started,
        notes=notes,
    )
