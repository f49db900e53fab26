"""The public API is documented: every exported callable has a docstring with Args/Returns."""

import inspect

import pytest

import jaxreg

MODULES = [jaxreg, jaxreg.masks, jaxreg.nn, jaxreg.penalties, jaxreg.pruning, jaxreg.schedules, jaxreg.training]


def _public(module):
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if inspect.isfunction(obj) and obj.__module__.startswith("jaxreg"):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj) and obj.__module__.startswith("jaxreg"):
            yield f"{module.__name__}.{name}", obj


API = dict(item for module in MODULES for item in _public(module))


@pytest.mark.parametrize("name", sorted(API))
def test_public_symbol_documented(name):
    obj = API[name]
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    if inspect.isfunction(obj):
        assert "Returns:" in doc, f"{name}: docstring lacks a Returns: section"
        if inspect.signature(obj).parameters:
            assert "Args:" in doc, f"{name}: docstring lacks an Args: section"


def test_version_is_a_string():
    assert isinstance(jaxreg.__version__, str) and jaxreg.__version__.count(".") == 2
