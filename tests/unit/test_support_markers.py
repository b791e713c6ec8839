"""The ``redis`` marker check of tests/conftest.py: a test that uses a real-server fixture
without the marker fails the collection; with it (on the test or the module) it passes."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import pytest
from support.markers import check_collection

def pytest_collection_modifyitems(config, items):
    check_collection(items)

@pytest.fixture
def real_client():
    return None
"""


def test_an_unmarked_real_server_test_fails_the_collection(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    redis: real server\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_unmarked="def test_talks_to_redis(real_client):\n    pass\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*must carry the `redis` marker*",
                                 "*test_unmarked.py::test_talks_to_redis (uses real_client)*"])


def test_marked_real_server_tests_collect(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    redis: real server\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_marked=(
            "import pytest\n\n"
            "@pytest.mark.redis\n"
            "def test_marked(real_client):\n    pass\n\n"
            "def test_pure():\n    pass\n"
        ),
        test_module_marked=(
            "import pytest\n\npytestmark = pytest.mark.redis\n\n"
            "def test_in_a_marked_module(real_client):\n    pass\n"
        ),
    )
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*3 tests collected*"])
