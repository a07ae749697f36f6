from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hardbatch.data import CodeSearchConfig, build_codesearch, extract_codesearch, load_codesearch, load_pairs
from hardbatch.data.cache import codesearch_cache_dir, read_pair_parquet, stale_reason
from hardbatch.data.codesearch import assign_split, extract_pairs_from_source
from hardbatch.errors import StaleCacheError

CORE = textwrap.dedent(
    '''
    import functools


    def fibonacci(n):
        """Compute the n-th Fibonacci number by plain recursion.

        This second paragraph must not appear in the query.
        """
        if n < 2:
            return n
        return fibonacci(n - 1) + fibonacci(n - 2)


    def short(x):
        """Too short a summary."""
        y = x + 1
        z = y * 2
        return z


    def tiny(x):
        """Return the input value unchanged for testing purposes."""
        return x


    def undocumented(a, b):
        c = a + b
        d = c * 2
        return d


    class Stack:
        """A stack class docstring is not a function."""

        @functools.lru_cache
        def push(self, item):
            """Push one item onto the top of the stack."""
            self.items.append(item)
            self.size += 1

        async def drain(self):
            """Asynchronously pop every remaining item from the stack."""

            while self.items:
                yield self.items.pop()


    def f(value):
        """Format a value with an f-string prefix that must survive masking."""
        text = f"{value}"
        g = f
        return text + str(g)
    '''
)

DUPLICATES = textwrap.dedent(
    '''
    def fib(n):
        """Another docstring that is long enough to be kept here."""
        if n < 2:
            return n
        return fib(n - 1) + fib(n - 2)


    def other(values):
        """Compute the n-th Fibonacci number by plain recursion."""
        total = 0
        for v in values:
            total += v
        return total
    '''
)


def _module_source(k: int) -> str:
    return textwrap.dedent(
        f'''
        def function_{k}(x):
            """Function number {k} transforms its argument in a unique way."""
            y = x * {k}
            z = y + {k}
            return z - 1
        '''
    )


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    """A small package of .py files: core, duplicates, 40 one-function modules, skipped and broken files."""
    root = tmp_path / "fakepkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "core.py").write_text(CORE)
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "dups.py").write_text(DUPLICATES)
    for k in range(40):
        (root / "sub" / f"mod_{k:02d}.py").write_text(_module_source(k))
    (root / "broken.py").write_text("def oops(:\n    pass\n")
    (root / "latin.py").write_bytes(b'def g():\n    """caf\xe9 is not utf-8 here and now."""\n    return 1\n')
    (root / "tests").mkdir()
    (root / "tests" / "test_core.py").write_text(_module_source(999))
    (root / "test_top.py").write_text(_module_source(998))
    return root


def _all_pairs(corpus):
    rows = {}
    for split, ds in corpus.splits.items():
        for i in range(len(ds)):
            rows[ds.ids[i]] = (split, ds.queries[i], ds.positives[i], ds.sources[i])
    return rows


def test_extraction_rules(fake_package):
    config = CodeSearchConfig(packages=(str(fake_package),))
    corpus = extract_codesearch(config, workers=1, show_progress=False)
    rows = _all_pairs(corpus)
    by_name = {ident.split(":")[1]: value for ident, value in rows.items()}

    # query = first paragraph; docstring removed; own name masked (definition and recursion)
    _, query, code, source = by_name["fibonacci"]
    assert source == "fakepkg"
    assert query == "Compute the n-th Fibonacci number by plain recursion."
    assert "second paragraph" not in code and '"""' not in code
    assert code.splitlines()[0] == "def FUNC(n):"
    assert "FUNC(n - 1) + FUNC(n - 2)" in code and "fibonacci" not in code

    # methods: decorators kept, dedented, blank line after docstring dropped, qualname in the id
    assert by_name["Stack.push"][2].startswith("@functools.lru_cache\ndef FUNC(self, item):\n    self.items")
    assert by_name["Stack.drain"][2].startswith("async def FUNC(self):\n    while self.items:")
    # a one-letter name that is also a string prefix: f"..." stays intact
    assert 'text = f"{value}"' in by_name["f"][2] and "g = FUNC" in by_name["f"][2]

    # minimum lengths and undocumented functions
    assert "short" not in by_name  # 4-word summary
    assert "tiny" not in by_name  # 2 code lines
    assert "undocumented" not in by_name
    # dedup: identical code (after masking) and identical query are dropped, the first one kept
    dup_ids = [ident for ident in rows if ident.startswith("fakepkg.sub.dups:")]
    assert dup_ids == []
    stats = corpus.stats["fakepkg"]
    assert stats["duplicate_code"] == 1 and stats["duplicate_query"] == 1
    assert stats["unparsable"] == 1 and stats["unreadable"] == 1
    # tests/ and test_*.py are not walked
    assert not any("999" in q or "998" in q for _, q, _, _ in rows.values())
    assert stats["files"] == 2 + 2 + 40 + 2
    assert stats["kept"] == len(rows) == 4 + 40


def test_name_masking_is_optional(fake_package):
    config = CodeSearchConfig(packages=(str(fake_package),), mask_name=False)
    rows = _all_pairs(extract_codesearch(config, workers=1, show_progress=False))
    code = next(v[2] for k, v in rows.items() if k.endswith(":fibonacci:5"))
    assert code.startswith("def fibonacci(n):") and "FUNC" not in code
    # without masking, the renamed copy in dups.py is no longer an exact duplicate: kept
    assert any(k.startswith("fakepkg.sub.dups:fib:") for k in rows)


def test_splits_are_module_disjoint_and_configurable(fake_package):
    corpus = extract_codesearch(
        CodeSearchConfig(packages=(str(fake_package),)), workers=1, show_progress=False
    )
    module_split = {}
    for split, modules in corpus.modules.items():
        for module in modules:
            assert module_split.setdefault(module, split) == split  # never in two splits
            assert assign_split(module) == split
    assert {len(ds) > 0 for ds in corpus.splits.values()} == {True}
    for split, ds in corpus.splits.items():
        assert [i.split(":")[0] for i in ds.ids] == corpus.modules[split]
    only_train = extract_codesearch(
        CodeSearchConfig(packages=(str(fake_package),), split_fractions=(1.0, 0.0, 0.0)),
        workers=1,
        show_progress=False,
    )
    assert len(only_train.splits["dev"]) == len(only_train.splits["test"]) == 0
    with pytest.raises(ValueError, match="split_fractions"):
        CodeSearchConfig(split_fractions=(0.5, 0.2, 0.1))


def test_deterministic_and_worker_independent(fake_package):
    config = CodeSearchConfig(packages=(str(fake_package),))
    one = extract_codesearch(config, workers=1, show_progress=False)
    two = extract_codesearch(config, workers=2, show_progress=False)
    for split in one.splits:
        assert one.splits[split].fingerprint == two.splits[split].fingerprint
    assert one.versions == two.versions and one.versions["fakepkg"].startswith("sha256:")


def test_process_pool_matches_serial(tmp_path):
    root = tmp_path / "bigpkg"
    root.mkdir()
    for k in range(70):  # above the 64-file threshold so the pool is really used
        (root / f"m{k}.py").write_text(_module_source(k))
    config = CodeSearchConfig(packages=(str(root),))
    serial = extract_codesearch(config, workers=1, show_progress=False)
    pooled = extract_codesearch(config, workers=2, show_progress=False)
    assert [ds.fingerprint for ds in serial.splits.values()] == [
        ds.fingerprint for ds in pooled.splits.values()
    ]
    assert sum(len(ds) for ds in serial.splits.values()) == 70


def test_max_pairs_and_stdlib_package():
    corpus = extract_codesearch(
        CodeSearchConfig(packages=("json",), max_pairs=5), workers=1, show_progress=False
    )
    assert sum(len(ds) for ds in corpus.splits.values()) == 5
    assert corpus.versions["json"].startswith("CPython") or corpus.versions["json"].startswith("PyPy")
    assert set(corpus.splits["train"].sources) <= {"json"}
    missing = extract_codesearch(
        CodeSearchConfig(packages=("json", "no_such_package_xyz")), workers=1, show_progress=False
    )
    assert missing.versions["no_such_package_xyz"] == "not installed"
    assert any("not installed" in note for note in missing.notes)


def test_single_function_source():
    src = 'def add(a, b):\n    """Add two numbers and return the sum."""\n    c = a + b\n    return c\n'
    ((query, code, qualname, line),) = extract_pairs_from_source(src, CodeSearchConfig())
    assert (query, qualname, line) == ("Add two numbers and return the sum.", "add", 1)
    assert code == "def FUNC(a, b):\n    c = a + b\n    return c"
    assert extract_pairs_from_source(src, CodeSearchConfig(min_code_lines=4)) == []
    # a docstring sharing its line with code cannot be cut out: skipped
    assert (
        extract_pairs_from_source(
            'def h(x): """Doc string with five words."""; return x\n', CodeSearchConfig()
        )
        == []
    )


def test_cache_build_reuse_and_staleness(fake_package, tmp_path):
    out = tmp_path / "build"
    config = CodeSearchConfig(packages=(str(fake_package),))
    first = build_codesearch(out, config, workers=1, show_progress=False)
    assert first.rebuilt and sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "dev.parquet",
        "manifest.json",
        "test.parquet",
        "train.parquet",
    ]
    train, meta = read_pair_parquet(out / "train.parquet")
    info = meta["codesearch"]
    assert info["params"]["mask_name"] is True and info["params"]["extractor_version"] >= 1
    assert info["versions"]["fakepkg"].startswith("sha256:") and meta["fingerprint"] == train.fingerprint
    assert load_pairs(out / "train.parquet").fingerprint == train.fingerprint  # a normal pair file

    again = build_codesearch(out, config, workers=1, show_progress=False)
    assert not again.rebuilt

    # a parameter change is detected and rebuilt
    unmasked = CodeSearchConfig(packages=(str(fake_package),), mask_name=False)
    assert "mask_name" in stale_reason(out, unmasked)
    rebuilt = build_codesearch(out, unmasked, workers=1, show_progress=False)
    assert rebuilt.rebuilt and "different parameters (mask_name)" in rebuilt.reason
    assert stale_reason(out, unmasked) is None

    # a changed source file changes the recorded version: stale
    (fake_package / "sub" / "mod_00.py").write_text(_module_source(1000))
    assert "different package versions" in stale_reason(out, unmasked)


def test_load_codesearch_verifies_content_hash(fake_package, tmp_path, capsys):
    config = CodeSearchConfig(packages=(str(fake_package),))
    dev = load_codesearch("dev", config, cache_dir=tmp_path, workers=1, show_progress=False)
    assert dev.name == "codesearch-dev" and len(dev) > 0
    folder = codesearch_cache_dir(tmp_path, config)
    assert folder.parent == tmp_path and folder.name.startswith(
        "codesearch-"
    )  # non-default params: own folder

    # tamper with the rows but keep the metadata: detected by the content hash
    import pyarrow.parquet as pq

    path = folder / "dev.parquet"
    table = pq.read_table(path)
    tampered = table.set_column(0, "query", [["tampered query"] * table.num_rows])
    pq.write_table(tampered.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(StaleCacheError, match="content hash"):
        load_codesearch("dev", config, cache_dir=tmp_path, rebuild=False)
    again = load_codesearch("dev", config, cache_dir=tmp_path, workers=1, show_progress=False)
    assert again.fingerprint == dev.fingerprint
    assert "content hash mismatch" in capsys.readouterr().err


def test_load_pairs_codesearch_spec(fake_package, tmp_path, monkeypatch):
    monkeypatch.setenv("HARDBATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HARDBATCH_PROGRESS", "0")
    spec = f"codesearch:train?packages={fake_package}&max_pairs=20"
    train = load_pairs(spec)
    assert 0 < len(train) <= 20 and train.name == "codesearch-train"
    assert all(source == "fakepkg" for source in train.sources)
    assert any((tmp_path / "cache").glob("codesearch-*/train.parquet"))


def test_a_dotted_package_is_located_without_importing_its_parent(tmp_path, monkeypatch):
    """``packages=a.b`` must not run ``a/__init__.py`` (``torchrun -m`` puts the cwd on ``sys.path``)."""
    import sys

    from hardbatch.data.codesearch import discover_files

    marker = tmp_path / "imported"
    package = tmp_path / "trapdoor_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (package / "sub" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (package / "sub" / "tools.py").write_text('def f(x):\n    """Double x."""\n    return 2 * x\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    files = discover_files("trapdoor_pkg.sub")
    assert sorted(f.module for f in files) == ["trapdoor_pkg.sub", "trapdoor_pkg.sub.tools"]
    assert not marker.exists() and "trapdoor_pkg" not in sys.modules
    assert discover_files("trapdoor_pkg.missing") is None and not marker.exists()
