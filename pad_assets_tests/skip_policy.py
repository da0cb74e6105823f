"""A pytest plugin that fails the run when a test skips for a reason nobody agreed to.

Why: a skipped test reports green. The suite once skipped half of the sharing and cache-ops
tests on a machine without an optional model runtime, and nobody noticed. Every skip reason
the project accepts is listed, with why, in ``allowed_skips.txt`` beside this file (one
regular expression per line, matched against the skip reason with ``re.search``). Any other
skip turns a passing run into a failing one (exit status 1) and names the tests.

Set ``PAD_ALLOW_ANY_SKIP=1`` to turn the check off for a local run (never in CI).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ALLOWED_SKIPS_FILE = Path(__file__).with_name("allowed_skips.txt")

def load_allowed_patterns(path: Path | None = None) -> list[re.Pattern[str]]:
    """The allowed skip reasons: non-empty lines of the list that are not ``#`` comments."""
    path = ALLOWED_SKIPS_FILE if path is None else path
    if not path.exists():
        return []
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(re.compile(line))
    return patterns


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipRecorder:
    """Collects one session's skips (one instance per pytest config, so nested runs stay apart)."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # xfail also reports "skipped"; only real skips are judged here.
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid, _skip_reason(report)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if os.environ.get("PAD_ALLOW_ANY_SKIP") == "1" or exitstatus != 0:
            return
        allowed = load_allowed_patterns()
        unexpected = [(nodeid, reason) for nodeid, reason in self.skips
                      if not any(p.search(reason) for p in allowed)]
        if not unexpected:
            return
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        reporter.write_sep("=", "unexpected skips", red=True)
        reporter.write_line(f"{len(unexpected)} test(s) skipped for a reason not in "
                            f"{ALLOWED_SKIPS_FILE.name}:")
        for nodeid, reason in unexpected:
            reporter.write_line(f"  {nodeid}: {reason}")
        reporter.write_line("Fix the cause, or add the reason (with why) to the allowed list.")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipRecorder(), "pad_skip_recorder")
