"""Helpers shared by every test folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_benchmark(name: str) -> ModuleType:
    """Import benchmarks/<name>.py (a script folder, not a package) as module `name`."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def import_benchmark():
    """`import_benchmark("learning_toy")` gives that benchmark script as a module."""
    return _import_benchmark
