"""Optional dependencies (setup.cfg extras), imported where they are needed, with an error that names the extra."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional package is not installed; the message says which ``pip install 'zoo[extra]'`` brings it."""


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying that ``purpose`` needs the ``extra`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs the {package or module} package, which is not installed: "
                                f"pip install 'zoo[{extra}]' (or pip install {package or module})") from exc
