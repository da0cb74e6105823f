"""The skip policy plugin: an unlisted skip fails a passing run; a listed one does not."""

from __future__ import annotations

import pytest

from pad_assets_tests import skip_policy

pytest_plugins = ["pytester"]

_SUITE = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("{reason}")
"""


def _run(pytester: pytest.Pytester, reason: str, allowed: str,
         monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    allowed_file = pytester.path / "allowed.txt"
    allowed_file.write_text(allowed, encoding="utf-8")
    monkeypatch.setattr(skip_policy, "ALLOWED_SKIPS_FILE", allowed_file)
    monkeypatch.delenv("PAD_ALLOW_ANY_SKIP", raising=False)
    pytester.makepyfile(_SUITE.format(reason=reason))
    return pytester.runpytest_inprocess("-p", "pad_assets_tests.skip_policy")


def test_an_unlisted_skip_fails_the_run_and_names_the_test(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, "needs a GPU", "# nothing allowed\n", monkeypatch)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 test(s) skipped for a reason not in*",
                                 "*test_skips: needs a GPU*"])


def test_a_listed_skip_keeps_the_run_green(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, "needs a GPU", "# why: no accelerator here\nneeds a (GPU|TPU)\n",
                  monkeypatch)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)


def test_the_project_list_parses_and_allows_only_missing_scaleout_parts() -> None:
    # Every pattern compiles; the allowed reasons are a scale-out part (PostgreSQL, the S3
    # server, dask) that cannot start on a developer machine, and a tmpfs that a non-root
    # user cannot mount (store/test_store_full_disk.py); under CI those tests fail instead
    # of skipping (test_scaleout.start_part, test_store_full_disk._no_mount), so any skip
    # in CI still fails.
    patterns = skip_policy.load_allowed_patterns()
    assert [p.pattern for p in patterns] == ["^scale-out part unavailable:",
                                             "^a real full disk needs a tmpfs mount"]
    assert not any(p.search("needs a GPU") or p.search("dagster not installed")
                   for p in patterns)
