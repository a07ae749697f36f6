"""The bad-input catalogue: every mistake a user can make prints one line naming it and exits with status 2.

Each case builds its own broken input in a temporary folder, runs ``hardbatch ...`` through the real
entry point and asserts the exit status, that stderr is a single line without a traceback, and the
message fragment. ``forbid`` lists functions that must not run (the output check comes before any
computation).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROWS = [
    {"query": f"how to do task {i} with tool {i % 3}", "positive": f"def task_{i}(x): return {i}"}
    for i in range(24)
]


@dataclass
class Case:
    name: str
    argv: Callable[[Path, Path], list]  # (tmp folder, saved tiny model) → arguments after `hardbatch`
    message: str
    forbid: list[str] = field(default_factory=list)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    needs: Callable[[], str | None] | None = None  # returns a reason to skip


def _pairs(tmp: Path) -> Path:
    path = tmp / "pairs.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _emb(tmp: Path, rows: int = len(ROWS), name: str = "q.npy") -> Path:
    path = tmp / name
    np.save(path, np.random.default_rng(rows).normal(size=(rows, 8)).astype(np.float32))
    return path


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _file(tmp: Path) -> Path:
    return _write(tmp, "a-file.txt", "not a folder\n")


def _readonly(tmp: Path) -> Path:
    """A folder this process cannot write to (root ignores permission bits: use sysfs, refused even to root)."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp / "readonly"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    return folder


def _broken_model(tmp: Path, model: Path, how: str) -> Path:
    target = tmp / f"model-{how}"
    if how == "empty":
        target.mkdir()
        return target
    shutil.copytree(model, target)
    if how == "bad-config":
        (target / "config.json").write_text("{not json")
    elif how == "no-config":
        (target / "config.json").unlink()
        (target / "modules.json").unlink()
    elif how == "no-weights":
        (target / "model.safetensors").unlink()
    elif how == "truncated-weights":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:50_000])
    elif how == "bad-modules":
        (target / "modules.json").write_text("[1")
    return target


def _no_cuda() -> str | None:
    import torch

    return "a CUDA device is available" if torch.cuda.is_available() else None


def _readonly_possible() -> str | None:
    import tempfile

    if os.geteuid() != 0:
        return None
    try:
        os.close(tempfile.mkstemp(dir="/sys/kernel")[0])
    except OSError:
        return None
    return "no folder refuses writes to root here"


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)


def _no_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    from hardbatch.errors import MissingExtraError

    def missing(*args, **kwargs):
        raise MissingExtraError("faiss", "faiss", "approximate kNN (--knn hnsw)")

    monkeypatch.setattr("hardbatch.app.cli.mine_cmd.teacher_embeddings", missing)


def _train(tmp: Path, model: Path, *extra) -> list:
    return ["train", _pairs(tmp), "-o", tmp / "run", "-m", model, "-b", "8", "--eval-data", "none",
            "--device", "cpu", *extra]  # fmt: skip


EVALUATE = "hardbatch.evaluate.evaluate_texts"
TEACHER = "hardbatch.app.cli.mine_cmd.teacher_embeddings"
CASES = [
    # --- outputs: checked before any computation --------------------------------------------------------
    Case("mine b3 into a read-only folder", lambda t, m: ["mine", "b3", _pairs(t), "-o", _readonly(t) / "p.parquet"],
         "cannot write to", forbid=[TEACHER], needs=_readonly_possible),
    Case("mine b3 below a file", lambda t, m: ["mine", "b3", _pairs(t), "-o", _file(t) / "p.parquet"],
         "a-file.txt is a file, not a folder", forbid=[TEACHER]),
    Case("mine gcbs into a folder name", lambda t, m: ["mine", "gcbs", _pairs(t), "-o", t],
         "is a folder; give a file name", forbid=[TEACHER]),
    Case("evaluate into a read-only folder",
         lambda t, m: ["evaluate", _pairs(t), "-m", m, "-o", _readonly(t) / "m.json"],
         "cannot write to", forbid=[EVALUATE], needs=_readonly_possible),
    Case("evaluate with a zero search block", lambda t, m: ["evaluate", _pairs(t), "-m", m, "--chunk-size", "0"],
         "--chunk-size must be a positive integer, got 0", forbid=[EVALUATE]),
    Case("evaluate below a file", lambda t, m: ["evaluate", _pairs(t), "-m", m, "-o", _file(t) / "m.json"],
         "is a file, not a folder", forbid=[EVALUATE]),
    Case("embed into a file", lambda t, m: ["embed", _pairs(t), "-m", m, "-o", _file(t)],
         "a-file.txt: is a file, not a folder", forbid=["hardbatch.embed.embed_pairs"]),
    Case("inspect into a file", lambda t, m: ["inspect", _pairs(t), "-o", _file(t)], "is a file, not a folder",
         forbid=["hardbatch.app.cli.inspect_cmd.teacher_embeddings"]),
    Case("train into a file", lambda t, m: ["train", _pairs(t), "-o", _file(t), "-m", m],
         "is a file, not a folder", forbid=["hardbatch.train.trainer.train"]),
    Case("data convert below a file", lambda t, m: ["data", "convert", _pairs(t), _file(t) / "x.parquet"],
         "TARGET", forbid=["hardbatch.data.load_pairs"]),
    Case("disk full while writing", lambda t, m: ["data", "convert", _pairs(t), t / "out.jsonl"],
         "out.jsonl: No space left on device (free some space", patch=_disk_full),
    # --- models ---------------------------------------------------------------------------------------------
    Case("model path is a file", lambda t, m: ["evaluate", _pairs(t), "-m", _file(t)], "is a file; give the model's folder"),
    Case("model folder is empty", lambda t, m: ["evaluate", _pairs(t), "-m", _broken_model(t, m, "empty")],
         "is an empty folder"),
    Case("model folder without config", lambda t, m: ["embed", _pairs(t), "-o", t / "e", "-m", _broken_model(t, m, "no-config")],
         "has no config.json or modules.json"),
    Case("model with invalid config.json", lambda t, m: ["evaluate", _pairs(t), "-m", _broken_model(t, m, "bad-config")],
         "cannot load it (OSError"),
    Case("model without weights", lambda t, m: ["evaluate", _pairs(t), "-m", _broken_model(t, m, "no-weights")],
         "no file named model.safetensors"),
    Case("model with truncated weights",
         lambda t, m: ["evaluate", _pairs(t), "-m", _broken_model(t, m, "truncated-weights")],
         "cannot load it (SafetensorError"),
    Case("model with invalid modules.json", lambda t, m: ["evaluate", _pairs(t), "-m", _broken_model(t, m, "bad-modules")],
         "cannot load it (JSONDecodeError"),
    Case("model that does not exist", lambda t, m: ["evaluate", _pairs(t), "-m", t / "nope"], "never downloads models"),
    Case("teacher that is a file", lambda t, m: ["mine", "b3", _pairs(t), "-t", _file(t), "-o", t / "p.parquet"],
         "is a file; give the model's folder"),
    # --- data files ----------------------------------------------------------------------------------------
    Case("lone surrogate in JSON lines",
         lambda t, m: ["data", "validate", _write(t, "s.jsonl", '{"query": "a \\ud800 b", "positive": "p"}\n')],
         "line 1: field 'query' holds a lone surrogate \\ud800"),
    Case("lone surrogate in a JSON array",
         lambda t, m: ["data", "validate", _write(t, "s.json", '[{"query": "q", "positive": "x\\udfff"}]')],
         "record 0: field 'positive' holds a lone surrogate \\udfff"),
    Case("100k-deep nesting in JSON", lambda t, m: ["data", "validate", _write(t, "d.json", "[" * 100_000 + "]" * 100_000)],
         "d.json: JSON nested too deeply"),
    Case("100k-deep nesting in JSON lines",
         lambda t, m: ["data", "validate", _write(t, "d.jsonl", '{"query": ' + "[" * 100_000 + "]" * 100_000 + "}\n")],
         "d.jsonl: line 1: JSON nested too deeply"),
    Case("invalid JSON line", lambda t, m: ["data", "validate", _write(t, "b.jsonl", '{"query": "q", "positive": "p"}\n{oops\n')],
         "line 2: invalid JSON"),
    Case("missing field", lambda t, m: ["data", "validate", _write(t, "m.jsonl", '{"query": "q", "positive": "p"}\n{"query": "q2"}\n')],
         "line 2: missing field 'positive'"),
    Case("data file that does not exist", lambda t, m: ["data", "validate", t / "none.jsonl"], "none.jsonl: file not found"),
    # --- devices -------------------------------------------------------------------------------------------
    Case("--device cuda on a CPU build", lambda t, m: ["evaluate", _pairs(t), "-m", m, "--device", "cuda"],
         "--device cuda: this torch build", needs=_no_cuda),
    Case("--device that is no device", lambda t, m: ["evaluate", _pairs(t), "-m", m, "--device", "gpu"],
         "--device 'gpu': not a device"),
    # --- train settings ------------------------------------------------------------------------------------
    Case("unknown --sampler-option key", lambda t, m: _train(t, m, "-s", "gcbs", "--sampler-option", "target_degre=8"),
         "--sampler-option target_degre: not an option of sampler 'gcbs'; it accepts"),
    Case("GCBS plan given to --sampler gcbs", lambda t, m: _train(t, m, "-s", "gcbs", "--plan", t / "gcbs.parquet"),
         "--plan is read by --sampler b3, random-hn only"),
    Case("empty .npy via --sampler-option",
         lambda t, m: _train(t, m, "-s", "topic", "--sampler-option", f"query_emb={_write(t, 'e.npy', '')}"),
         "e.npy: not a readable .npy file"),
    Case("--sampler-option without =", lambda t, m: _train(t, m, "--sampler-option", "seed"), "expects KEY=VALUE"),
    Case("--config that does not exist", lambda t, m: ["train", "--config", t / "c.json"], "c.json: no such file"),
    Case("--config with an unknown field",
         lambda t, m: ["train", "--config", _write(t, "c.json", '{"data": "d", "output_dir": "o", "learning_rate": 1}')],
         "unknown field(s) 'learning_rate'"),
    Case("--config with a wrong type",
         lambda t, m: ["train", "--config", _write(t, "c.json", '{"data": "d", "output_dir": "o", "epochs": "2"}')],
         "field 'epochs' must be int, got '2'"),
    Case("--config that is not JSON", lambda t, m: ["train", "--config", _write(t, "c.json", "epochs: 2")],
         "c.json: invalid JSON"),
    Case("train without an output", lambda t, m: ["train", _pairs(t)], "give -o/--output"),
    Case("batch size 0", lambda t, m: _train(t, m, "-b", "0"), "batch_size must be a positive integer, got 0"),
    Case("one teacher embedding file only", lambda t, m: ["mine", "b3", "--query-emb", _emb(t), "-o", t / "p.parquet"],
         "give both --query-emb and --positive-emb"),
    Case("teacher embeddings of other data",
         lambda t, m: ["mine", "b3", _pairs(t), "--query-emb", _emb(t, 5), "--positive-emb", _emb(t, 5, "p.npy"),
                       "-o", t / "p.parquet"],
         "q.npy"),
    Case("unknown inspect --option key",
         lambda t, m: ["inspect", _pairs(t), "-s", "gcbs", "--option", "gcbs.bogus=1", "-o", t / "i"],
         "--option gcbs.bogus: not an option of sampler 'gcbs'",
         forbid=["hardbatch.app.cli.inspect_cmd.teacher_embeddings"]),
    Case("experiment with a bad --batch-sizes", lambda t, m: ["experiment", "-o", t / "e", "--batch-sizes", "32,x"],
         "--batch-sizes expects comma-separated integers, got '32,x'", forbid=["hardbatch.app.experiment.run_grid"]),
    Case("plan that does not exist", lambda t, m: _train(t, m, "-s", "b3", "--plan", t / "none.parquet", "-b", "4"),
         "none.parquet: batch plan not found"),
    Case("--sampler-option for a setting the trainer owns", lambda t, m: _train(t, m, "--sampler-option", "seed=3"),
         "--sampler-option seed: not a sampler option here; it is set by --seed"),
    Case("IVF with --nprobe 0",
         lambda t, m: ["mine", "gcbs", _pairs(t), "--query-emb", _emb(t), "--positive-emb", _emb(t, name="p.npy"),
                       "-b", "8", "--graph-method", "ivf", "--nprobe", "0", "-o", t / "g.parquet"],
         "nprobe must be a positive integer, got 0"),
    Case("grouped IVF with --nlist 0",
         lambda t, m: ["mine", "gcbs", _pairs(t), "--query-emb", _emb(t), "--positive-emb", _emb(t, name="p.npy"),
                       "-b", "8", "--graph-method", "ivf_torch", "--nlist", "0", "-o", t / "g.parquet"],
         "nlist must be a positive integer, got 0"),
    # rich markup must not eat the extra's name in brackets
    Case("a missing optional extra", lambda t, m: ["mine", "b3", _pairs(t), "-o", t / "p.parquet"],
         "pip install 'hardbatch[faiss]'", patch=_no_faiss),
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save(str(path))
    return path


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, model_dir, cli, monkeypatch):
    reason = case.needs() if case.needs else None
    if reason:
        pytest.skip(reason)
    argv = case.argv(tmp_path, model_dir)
    cache = Path(os.environ["HARDBATCH_CACHE"])  # the suite's private cache (monkeypatch.undo drops it)
    for target in case.forbid:

        def must_not_run(*args, _target=target, **kwargs):
            raise AssertionError(f"{_target} ran before the output was checked")

        monkeypatch.setattr(target, must_not_run)
    if case.patch:
        case.patch(monkeypatch)
    code, _, err = cli("--quiet", *argv)
    monkeypatch.undo()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and case.message in lines[0], lines[0]
    if case.name == "teacher that is a file":  # refused before any embedding folder exists (one used to)
        assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))


def test_debug_shows_the_traceback(tmp_path):
    import sys

    from hardbatch.app.cli import main
    from hardbatch.errors import ConfigError

    argv = ["hardbatch", "--debug", "evaluate", str(_pairs(tmp_path)), "-m", str(_file(tmp_path))]
    old = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(ConfigError, match="is a file"):
            main.run()
    finally:
        sys.argv = old
        main._state["debug"] = False


def test_catalogue_covers_at_least_30_kinds():
    assert len({case.message for case in CASES}) >= 30
