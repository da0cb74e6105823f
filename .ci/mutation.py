"""Repeatable mutation run over the core packages: one ``mutmut`` run per module group.

A single ``mutmut run`` over every core module would first trace the whole selection of
tests and then give each mutant every selected test that reaches its function: hours on
two cores. Here each group mutates its own modules and lists only the fast, in-process
test files that exercise them (``pytest_add_cli_args_test_selection`` of its own mutmut
config); mutmut then runs, per mutant, only those of them that reach the mutated function.
Subprocess tests (kill trials, the console script) import the unmutated code and could
not kill anything, so they are left out.

Each group works in ``build/mutation/<group>/`` (links to the sources and tests, and a
``pyproject.toml`` made from the repository's: its pytest options, its ``[tool.mutmut]``
options, and the group's ``only_mutate`` and test files). mutmut keeps its results there,
so a second run re-tests only the mutants of changed code. Usage, at low priority::

    nice -n 15 python .ci/mutation.py [GROUP ...] [--max-children 2]
    python .ci/mutation.py --report            # scores from the results so far
    cd build/mutation/store && mutmut results  # survivors; then: mutmut show NAME

What keeps a run affordable (``[tool.mutmut]`` in pyproject.toml): mutmut runs, per
mutant, only the group's tests that reach the mutated function, fastest first, stopping at
the first failure (``-x``); ``mutate_only_covered_lines`` makes no mutant on a line the
group's tests never execute (it would survive after the whole selection ran: the costliest
kind, and certain); ``do_not_mutate_patterns`` skips log calls, warnings and one-line
``raise`` messages (texts). Both are counted in the report rather than hidden.

Scores are printed per module and written to ``build/mutation/scores.json``:
killed / (killed + survived) over the mutants made, and again counting the "uncovered"
mutants as survivors. Timeouts are counted apart (a limit of (estimate + 30 s) x 10 wall
seconds, since a niced run on a busy machine waits for CPU), and so are "no tests" (no
selected test reaches the function) and "not checked" (the run was stopped first).

The coverage filter numbers a function's mutants by the lines covered when its file was
mutated: after changing a group's tests so that they cover other lines, start that group
afresh (``rm -r build/mutation/<group>``); to re-test survivors after adding tests that
cover nothing new, ``python .ci/mutation.py GROUP --mutants "NAME*"``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"

#: group -> (modules to mutate, fast test files that exercise them). No test that runs
#: TensorFlow itself (Keras models): TF hangs in mutmut's forked sessions (TF Lite models
#: run on LiteRT, which is fine).
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "keys": (["pad_assets/keys.py", "pad_assets/hashing.py"],
             ["pad_assets_tests/test_hashing.py"]),
    "io_manager": (["pad_assets/orchestration/io_manager.py"],
                   ["pad_assets_tests/orchestration/test_io_manager.py",
                    "pad_assets_tests/orchestration/test_io_manager_outputs.py",
                    "pad_assets_tests/orchestration/test_checks.py"]),
    "gc": (["pad_assets/maintenance/collection.py"],
           ["pad_assets_tests/maintenance/test_gc_plan.py",
            "pad_assets_tests/maintenance/test_gc_report.py",
            "pad_assets_tests/maintenance/test_gc_guarantees.py",
            "pad_assets_tests/maintenance/test_verify_repair_gc.py",
            "pad_assets_tests/store/test_shard_gc_pause.py",
            "pad_assets_tests/store/test_store_full_disk.py",
            "pad_assets_tests/layers/test_predictions_after_gc.py"]),
    "store": (["pad_assets/store/index.py", "pad_assets/store/shards.py",
               "pad_assets/store/store.py"],
              ["pad_assets_tests/store/test_store.py",
               "pad_assets_tests/store/test_store_rebuild.py",
               "pad_assets_tests/store/test_store_full_disk.py",
               "pad_assets_tests/store/test_compression.py", "pad_assets_tests/test_hashing.py",
               "pad_assets_tests/maintenance/test_gc_guarantees.py"]),
    "layers": (["pad_assets/layers/raw.py", "pad_assets/layers/derived.py",
                "pad_assets/layers/predictions.py", "pad_assets/layers/model_names.py"],
               ["pad_assets_tests/layers/test_predictions_after_gc.py",
                "pad_assets_tests/layers/test_raw.py",
                "pad_assets_tests/layers/test_raw_provenance.py",
                "pad_assets_tests/layers/test_preprocessing_executor.py",
                "pad_assets_tests/layers/test_derived_lineage.py",
                "pad_assets_tests/layers/test_cold_path.py",
                "pad_assets_tests/layers/test_model_names.py",
                "pad_assets_tests/dataset/test_batch_card_ids.py",
                "pad_assets_tests/dataset/test_user_paths.py", "-k", "not sigkill"]),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
          255: "timeout", -11: "segfault", -9: "segfault", None: "not checked"}


def _section(text: str, name: str) -> str:
    """One ``[name]`` table of a TOML file, verbatim (up to the next table header)."""
    m = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    return f"[{name}]\n{m.group(1).rstrip()}\n" if m else ""


def _toml_list(values: list[str]) -> str:
    return json.dumps(values)  # a JSON list of plain strings is a TOML array


def prepare(group: str, timeout_multiplier: float | None = None) -> Path:
    """The group's folder: links to the code and tests, and its own mutmut config
    (``timeout_multiplier``: instead of pyproject.toml's)."""
    modules, tests = GROUPS[group]
    here = OUT / group
    (here / "mutants").mkdir(parents=True, exist_ok=True)  # on PYTHONPATH from the start
    for name in ("pad_assets", "pad_assets_tests", "workspace.yaml"):
        link = here / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    text = (ROOT / "pyproject.toml").read_text()
    common = _section(text, "tool.mutmut")
    common = re.sub(r"^(only_mutate|pytest_add_cli_args_test_selection)\s*=.*?\]\n", "",
                    common, flags=re.M | re.S)
    if timeout_multiplier is not None:
        common = re.sub(r"^timeout_multiplier\s*=.*$",
                        f"timeout_multiplier = {float(timeout_multiplier)}", common, flags=re.M)
    config = (_section(text, "tool.pytest.ini_options") + "\n" + common
              + f"only_mutate = {_toml_list(modules)}\n"
              + f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n")
    (here / "pyproject.toml").write_text(config)
    return here


def run(group: str, max_children: int, names: list[str] | None = None,
        timeout_multiplier: float | None = None) -> int:
    """One ``mutmut run`` of the group; ``names``: only these mutants (globs), re-tested."""
    here = prepare(group, timeout_multiplier)
    tmp = here / "tmp"  # the tests' own temp files, apart from the machine's
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # converted test models outlive the run: a forked worker must never convert one
    env = dict(os.environ, PYTHONPATH=str(here / "mutants"), TMPDIR=str(tmp),
               PAD_TEST_MODEL_CACHE=str(here / "models"))
    print(f"== {group}: {' '.join(GROUPS[group][0])}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children",
                             str(max_children), *(names or [])], cwd=here, env=env)
    while True:
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _sweep(tmp, older_than=STALE_TEMP_SECONDS)


#: mutmut's forked test sessions leave their pytest temp folders (pytest's retention
#: cleanup never runs in them): ~50 a minute, 36 GB in an hour. Older than any mutant's
#: time limit, they belong to finished sessions.
STALE_TEMP_SECONDS = 600


def _sweep(tmp: Path, older_than: float) -> None:
    """Remove finished test sessions' temp folders under ``tmp``."""
    import time

    cutoff = time.time() - older_than
    for folder in [*tmp.glob("pytest-of-*/pytest-*"), *tmp.glob("tmp*")]:
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # removed meanwhile


def _all_mutants(group: str, module: str) -> tuple[int, int]:
    """How many mutants ``module`` has on every line (no coverage filter), with and without
    ``do_not_mutate_patterns``: the difference to the run's own count is the mutants on
    lines the group's tests never execute (each a survivor, not run), and those skipped in
    log calls and messages. mutmut reads its config from the group's folder."""
    code = ("import json, sys\n"
            "from mutmut.configuration import config\n"
            "from mutmut.mutation.file_mutation import mutate_file_contents\n"
            "src = open(sys.argv[1]).read()\n"
            "n = len(mutate_file_contents(sys.argv[1], src).mutant_names)\n"
            "config().do_not_mutate_patterns = []\n"
            "print(json.dumps([n, len(mutate_file_contents(sys.argv[1], src).mutant_names)]))\n")
    out = subprocess.run([sys.executable, "-c", code, module], cwd=OUT / group,
                         capture_output=True, text=True, check=True).stdout
    with_patterns, without = json.loads(out.strip().splitlines()[-1])
    return with_patterns, without


def scores() -> dict[str, dict[str, int | float]]:
    """Per mutated module: counts per status and the score, from mutmut's result files.

    ``score`` is killed / (killed + survived) over the mutants the run made (covered lines);
    ``score_with_uncovered`` also counts the mutants on uncovered lines as survivors.
    """
    out: dict[str, dict[str, int | float]] = {}
    for group in GROUPS:
        for meta in sorted((OUT / group / "mutants").rglob("*.py.meta")):
            module = str(meta.relative_to(OUT / group / "mutants"))[:-len(".meta")]
            codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
            counts = Counter(STATUS.get(c, "suspicious") for c in codes.values())
            tried = counts["killed"] + counts["survived"]
            every, unfiltered = _all_mutants(group, module)
            uncovered = max(every - len(codes), 0)
            out[module] = {**counts, "mutants": len(codes), "uncovered": uncovered,
                           "in_messages": unfiltered - every,
                           "score": round(100 * counts["killed"] / tried, 1) if tried else 0.0,
                           "score_with_uncovered": round(
                               100 * counts["killed"] / (tried + uncovered), 1)
                           if tried + uncovered else 0.0}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="*", help=f"of {list(GROUPS)}; default: all")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only print the scores so far")
    ap.add_argument("--timeout-multiplier", type=float, metavar="X",
                    help="instead of pyproject.toml's 10 (for a busy machine): on an idle "
                         "one 3 is enough, and mutants that make gc wait cost a third")
    ap.add_argument("--mutants", nargs="+", metavar="NAME",
                    help="re-test only these mutants (mutmut names or globs) of one group")
    args = ap.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}: expected some of {list(GROUPS)}")
    if args.mutants and len(args.groups) != 1:
        ap.error("--mutants needs exactly one group")
    if not args.report:
        for group in args.groups or GROUPS:
            code = run(group, args.max_children, args.mutants, args.timeout_multiplier)
            if code:
                print(f"mutmut run of {group} exited {code}", file=sys.stderr)
    table = scores()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scores.json").write_text(json.dumps(table, indent=2))
    for module, s in table.items():
        print(f"{module:40} {s['score']:5}%  killed {s.get('killed', 0):4}  survived "
              f"{s.get('survived', 0):4}  timeout {s.get('timeout', 0):3}  no tests "
              f"{s.get('no tests', 0):4}  not checked {s.get('not checked', 0):4}  of "
              f"{s['mutants']}; uncovered {s['uncovered']} ({s['score_with_uncovered']}% "
              f"counting them), in messages {s['in_messages']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
