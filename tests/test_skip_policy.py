"""The CI skip policy of tests/conftest.py, on a throwaway suite run by pytest's own ``pytester``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import pytest

def test_skips():
    pytest.skip("promtool is missing")

@pytest.mark.allow_skip("this kernel has no pidfd")
def test_may_skip():
    pytest.skip("no pidfd")

@pytest.mark.skipif(True, reason="py-spy is missing")
def test_skipped_by_mark():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_to_fail():
    assert False

def test_passes():
    pass
"""


INI = """[pytest]
asyncio_default_fixture_loop_scope = function
markers =
    allow_skip(reason): may skip in CI
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_in_ci_an_unmarked_skip_fails_with_its_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-ra")
    result.assert_outcomes(passed=1, skipped=1, errors=1, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*test_skips*skipped in CI (Skipped: promtool is missing)*"])
    result.stdout.fnmatch_lines(["*test_skipped_by_mark*skipped in CI (*py-spy is missing)*"])
    result.stdout.fnmatch_lines(["SKIPPED*no pidfd*"])


def test_outside_ci_skips_stay_skips(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    suite.runpytest().assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_in_ci_a_module_skipped_at_import_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini(INI)
    pytester.makepyfile(test_torch='import pytest\ntorch = pytest.importorskip("no_such_module_here")\n')
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*skipped whole in CI*no_such_module_here*"])
