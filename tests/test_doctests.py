"""The examples in the docstrings of attnspec.spec and attnspec.impl run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import attnspec.impl
import attnspec.spec

MODULES = sorted(
    m.name
    for package in (attnspec.spec, attnspec.impl)
    for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name == "attnspec.impl.torch_model":
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
