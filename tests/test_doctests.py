"""The examples in the docstrings of attnspec.spec run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import attnspec.spec

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(attnspec.spec.__path__, "attnspec.spec.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
