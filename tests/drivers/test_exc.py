"""The error tree: one module defines every error class, and its docstring draws them all."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import agent
import drivers
from drivers import exc as exc_module
from drivers import registry
from drivers.exc import ColdgateError, DriverUnavailable, UnknownDriver

_BRANCH = re.compile(r"^(?P<indent>[\s│]*)(?:├── |└── )?(?P<name>[A-Z]\w+)\s")


def _modules() -> list[str]:
    names = []
    for pkg in (agent, drivers):
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return names


def _drawing() -> dict[str, str | None]:
    """Class name -> the name of its parent, as the docstring draws them."""
    doc = exc_module.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        m = _BRANCH.match(line)
        assert m, line
        depth = m.start("name")
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[m["name"]] = stack[-1][1] if stack else None
        stack.append((depth, m["name"]))
    return parents


def test_every_error_class_of_the_project_is_defined_in_drivers_exc():
    outside = []
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name
                    and name != "drivers.exc" and not cls_name.startswith("_")):
                outside.append(f"{name}.{cls_name}")
    assert outside == []


def test_the_drawing_is_the_tree_that_is_defined():
    drawn = _drawing()
    defined = {n: c for n, c in vars(exc_module).items()
               if inspect.isclass(c) and issubclass(c, ColdgateError) and c.__module__ == "drivers.exc"}
    assert set(drawn) == set(defined)
    for name, cls in defined.items():
        parent = cls.__mro__[1].__name__ if cls is not ColdgateError else None
        assert drawn[name] == parent, name


def test_the_agent_and_drivers_raise_the_same_classes():
    from agent import exc as agent_exc

    for name in agent_exc.__all__:
        assert getattr(agent_exc, name) is getattr(exc_module, name)


def test_an_unknown_driver_type_is_a_coldgate_error_with_a_suggestion():
    with pytest.raises(UnknownDriver, match="did you mean 'nmea'") as caught:
        registry.get("nmae")
    assert isinstance(caught.value, DriverUnavailable)
    assert caught.value.type_name == "nmae" and "ble" in caught.value.known
    assert not isinstance(caught.value, KeyError)
