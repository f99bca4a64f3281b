"""Every docstring example in the package runs as a doctest, one test per docstring."""

import doctest
import importlib
import pkgutil

import pytest

import admm_jax


def _docstring_tests():
    finder = doctest.DocTestFinder()
    found = []
    for info in pkgutil.walk_packages(admm_jax.__path__, "admm_jax."):
        module = importlib.import_module(info.name)
        for t in finder.find(module, info.name):
            if t.examples and t.name.startswith(info.name):  # skip re-exported objects
                found.append(t)
    return found


TESTS = _docstring_tests()


def test_the_package_has_docstring_examples():
    assert len(TESTS) >= 20


@pytest.mark.parametrize("t", TESTS, ids=[t.name for t in TESTS])
def test_docstring_example(t):
    if all(ex.options.get(doctest.SKIP) for ex in t.examples):
        pytest.skip("every example is marked +SKIP (it needs downloaded data)")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(t, out=lambda s: print(s, end=""))
    failed, attempted = runner.summarize(verbose=False)
    assert attempted and not failed, f"{failed} of {attempted} examples failed in {t.name}"
