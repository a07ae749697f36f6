"""Mutation testing of hardbatch's core modules with mutmut (``make mutation``; not part of CI).

Each *group* pairs a few source modules with the tests that are meant to catch wrong versions of them.
For every group this script builds a scratch copy of the repository under ``build/mutation/<group>/``
(``src/``, ``tests/`` and a ``pyproject.toml`` with the group's ``[tool.mutmut]`` section), runs
``mutmut run`` there, and collects every mutant that was not killed. mutmut records which tests execute
which function and runs only those for each mutant, so a group's run costs roughly
``mutants × (covering tests' time)``.

The report, ``benchmarks/results/mutation.md`` (+ ``mutation.json``), lists per group the counts (killed,
survived, timeout, ...) and each survivor with its diff and an explanation from
``benchmarks/mutation_notes.json`` (survivors judged equivalent or harmless, keyed by mutant name); a
survivor without a note is marked **unexplained**: either a missing test or a note to write.

Budget: about 30 minutes on 2 cores for all groups (``--max-children 2``); ``--groups`` runs a subset.

Usage::

    python benchmarks/mutation.py                    # every group
    python benchmarks/mutation.py --groups collate   # one group
    python benchmarks/mutation.py --groups collate --survivors-only   # re-test the survivors after new tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
RESULTS = ROOT / "benchmarks" / "results"
NOTES = ROOT / "benchmarks" / "mutation_notes.json"
PRELOAD = ROOT / "benchmarks" / "mutation_preload.txt"

# group -> (modules to mutate, tests that should kill their mutants)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "collate": (
        ["src/hardbatch/train/collate.py"],
        ["tests/train/test_collate.py", "tests/train/test_collate_order.py"],
    ),
    "step": (
        ["src/hardbatch/train/step.py"],
        ["tests/train/test_learns.py", "tests/train/test_step_runner.py"],
    ),
    "rank_window": (
        ["src/hardbatch/graph/rank_window.py"],
        ["tests/graph/test_rank_window.py", "tests/mining/test_b3_known_answer.py"],
    ),
    "b3": (
        ["src/hardbatch/mining/b3.py"],
        ["tests/mining/test_b3_mining.py", "tests/mining/test_b3_known_answer.py"],
    ),
    "gcbs": (
        ["src/hardbatch/mining/gcbs.py", "src/hardbatch/graph/threshold.py"],
        [
            "tests/mining/test_gcbs_mining.py",
            "tests/mining/test_gcbs_known_answer.py",
            "tests/graph/test_threshold.py",
        ],
    ),
    "samplers": (
        [
            "src/hardbatch/samplers/nodup.py",
            "src/hardbatch/samplers/base.py",
            "src/hardbatch/samplers/random.py",
        ],
        [
            "tests/samplers/test_nodup_duplicates.py",
            "tests/samplers/test_samplers_baselines.py",
            "tests/samplers/test_base.py",
        ],
    ),
    "loss_tiled": (
        ["src/hardbatch/losses/tiled.py"],
        ["tests/losses/test_info_nce.py", "tests/losses/test_low_precision_tolerance.py"],
    ),
    "metrics": (
        ["src/hardbatch/evaluate/metrics.py", "src/hardbatch/evaluate/relevance.py"],
        ["tests/evaluate/test_metrics.py", "tests/evaluate/test_known_ranks.py"],
    ),
}

STATUSES = ("killed", "survived", "timeout", "suspicious", "no tests", "skipped", "segfault", "not checked")


def _mutmut_section(modules: list[str], tests: list[str]) -> str:
    def toml_list(values: list[str]) -> str:
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {toml_list(modules)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not distributed"]\n'
        # torch is not fork-safe once its thread pools exist: fork workers from a clean server process
        # that has imported the heavy libraries once (otherwise every mutant pays their import).
        'process_isolation = "forkserver"\n'
        'forkserver_warmup = "import"\n'
        f"preload_modules_file = {json.dumps(str(PRELOAD))}\n"
        # A loaded 2-core machine makes tests several times slower than during mutmut's timing run:
        # timeouts at (measured + 20 s) x 5 wall time (x 10 CPU time).
        "timeout_constant = 20.0\n"
        "timeout_multiplier = 5.0\n"
        "use_git_change_detection = false\n"
    )


def _prepare(group: str, modules: list[str], tests: list[str]) -> Path:
    work = WORK / group
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".hypothesis")
    shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + _mutmut_section(modules, tests))
    return work


def _mutmut(work: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARDBATCH_PROGRESS": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the mutated copy under mutants/src must be the one imported
    mutmut = Path(sys.executable).with_name("mutmut")
    return subprocess.run(
        [str(mutmut), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _results(work: Path) -> dict[str, str]:
    out = _mutmut(work, "results", "--all", "true").stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"\s+(\S+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def _refresh_tests(work: Path) -> None:
    """Copy the current tests into an existing work dir (and its mutants/ copy) for a re-run."""
    for target in (work / "tests", work / "mutants" / "tests"):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "tests", target, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))


def run_group(group: str, max_children: int, timeout: float, survivors_only: bool = False) -> dict:
    modules, tests = GROUPS[group]
    work = WORK / group
    names: list[str] = []
    if survivors_only and (work / "mutants").is_dir():
        # Re-test only the previous survivors against the current tests (after adding tests for them).
        names = [n for n, status in _results(work).items() if status in ("survived", "no tests", "timeout")]
        _refresh_tests(work)
    else:
        work = _prepare(group, modules, tests)
    started = time.perf_counter()
    try:
        proc = _mutmut(work, "run", "--max-children", str(max_children), *names, timeout=timeout)
        tail = (proc.stdout + proc.stderr)[-3000:]
        timed_out = False
    except subprocess.TimeoutExpired as exc:
        tail = str(exc.stdout or "")[-3000:]
        timed_out = True
    seconds = time.perf_counter() - started
    results = _results(work)
    counts = {status: sum(1 for s in results.values() if s == status) for status in STATUSES}
    survivors = []
    for name, status in sorted(results.items()):
        if status in ("survived", "no tests", "suspicious"):
            diff = _mutmut(work, "show", name).stdout.strip()
            survivors.append({"name": name, "status": status, "diff": diff})
    return {
        "group": group,
        "modules": modules,
        "tests": tests,
        "seconds": round(seconds, 1),
        "timed_out": timed_out,
        "counts": counts,
        "survivors": survivors,
        "log_tail": tail if not results else "",
    }


def write_report(runs: list[dict]) -> None:
    notes = json.loads(NOTES.read_text()) if NOTES.exists() else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = {}
    json_path = RESULTS / "mutation.json"
    if json_path.exists():
        previous = {r["group"]: r for r in json.loads(json_path.read_text()).get("runs", [])}
    previous.update({r["group"]: r for r in runs})
    runs = [previous[g] for g in GROUPS if g in previous]
    machine = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    json_path.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
    lines = [
        "# Mutation testing (mutmut)",
        "",
        "Generated by `make mutation` (`benchmarks/mutation.py`); not part of CI. Each group mutates its modules",
        "and runs only the tests listed for it (mutmut further restricts each mutant to the tests that execute",
        "the mutated function). Survivors carry an explanation from `benchmarks/mutation_notes.json`;",
        "**unexplained** ones are missing tests (or notes) to write.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, load average {machine['load_average']} at the end",
        "(shared with other jobs: the timings are only indicative).",
        "",
        "| group | modules | killed | survived | timeout | no tests | other | minutes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        c = run["counts"]
        other = sum(v for k, v in c.items() if k not in ("killed", "survived", "timeout", "no tests"))
        mods = ", ".join(m.removeprefix("src/hardbatch/") for m in run["modules"])
        flag = " (stopped at the time limit)" if run.get("timed_out") else ""
        lines.append(
            f"| {run['group']}{flag} | {mods} | {c['killed']} | {c['survived']} | {c['timeout']} | "
            f"{c['no tests']} | {other} | {run['seconds'] / 60:.1f} |"
        )
    if notes.get("_history"):
        lines += ["", "## History", "", *notes["_history"]]
    for run in runs:
        lines += ["", f"## {run['group']}", "", "Tests: " + ", ".join(f"`{t}`" for t in run["tests"]), ""]
        if not run["survivors"]:
            lines.append("No survivors." if sum(run["counts"].values()) else "No results (see the log tail).")
            if run.get("log_tail"):
                lines += ["", "```", run["log_tail"], "```"]
            continue
        for survivor in run["survivors"]:
            note = notes.get(survivor["name"], "**unexplained**")
            lines += [
                f"### `{survivor['name']}` ({survivor['status']})",
                "",
                note,
                "",
                "```diff",
                survivor["diff"],
                "```",
                "",
            ]
    (RESULTS / "mutation.md").write_text("\n".join(lines).rstrip() + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per group")
    parser.add_argument(
        "--survivors-only",
        action="store_true",
        help="re-test only the last run's survivors with the current tests",
    )
    args = parser.parse_args()
    runs = []
    for group in args.groups:
        print(f"mutating {group} ...", flush=True)
        run = run_group(group, args.max_children, args.timeout, args.survivors_only)
        print(f"  {run['counts']} in {run['seconds']:.0f} s", flush=True)
        runs.append(run)
        write_report(runs)
    print(f"wrote {RESULTS / 'mutation.md'}")


if __name__ == "__main__":
    main()
