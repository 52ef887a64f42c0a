"""Resolve user code named by import path ('package.module:attribute') with clear errors."""

from __future__ import annotations

import importlib
from typing import Any


class ImportPathError(ValueError):
    """A user import path that does not resolve; the message names the objective field."""


def resolve(path: str, field: str) -> Any:
    """Import `package.module:attribute`; raise ImportPathError naming `field` if it fails."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportPathError(
            f"{field} {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ImportPathError(
            f"{field} {path!r}: {module_name!r} has no attribute {attr!r}"
        ) from exc
