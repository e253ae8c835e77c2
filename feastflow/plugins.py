"""Code a use case ships in its own folder (its real-time functions, its data loader or world
generator), found by the names its model.yaml gives and imported from the file itself."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feastflow.spec import ModelSpec, SpecError


def use_case_module(spec: ModelSpec, module: str) -> Any:
    """`<use case folder>/<module>.py`, imported under a name of the use case's own."""
    if spec.source_dir is None:
        raise SpecError(f"use case {spec.name!r} was not loaded from a folder")
    path = Path(spec.source_dir) / f"{module}.py"
    if not path.is_file():
        raise FileNotFoundError(f"module {path} of use case {spec.name!r} does not exist "
                                "(named in its model.yaml)")
    name = f"feastflow_{spec.name}_{module}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot import {path}")
    loaded = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = loaded  # dataclasses look their module up while it executes
    try:
        module_spec.loader.exec_module(loaded)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return loaded


def use_case_function(spec: ModelSpec, module: str, function: str) -> Callable[..., Any]:
    """A function of the use case's own code, named in its model.yaml."""
    loaded = use_case_module(spec, module)
    fn = getattr(loaded, function, None)
    if not callable(fn):
        raise AttributeError(f"{loaded.__file__} has no function {function!r} (named in "
                             "model.yaml)")
    return fn
