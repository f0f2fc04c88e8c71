"""zoo: real-time detection transformers (RT-DETR, DETR) by name, with trustworthy pretrained weights.

``import zoo`` is cheap (the command line starts without torch): the public names below are imported on first
use, and the first use of any of them, or any registry query, imports every model family (``zoo.models``) once,
so that the registry is complete. Listing names (``zoo.list_models``, ``zoo list``) reads them from the families'
source instead, without importing torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from zoo import registry as _registry
from zoo.version import __version__

#: public name -> the module that defines it
_PUBLIC = {
    "create_model": "zoo.factory", "create_model_from_config": "zoo.factory",
    "list_models": "zoo.registry", "is_model": "zoo.registry", "model_entrypoint": "zoo.registry",
    "register_model": "zoo.registry", "register_component": "zoo.registry", "register_family": "zoo.registry",
    "get_component": "zoo.registry",
    "list_components": "zoo.registry", "draw": "zoo.engine.draw", "evaluate": "zoo.engine.evaluate",
    "train": "zoo.engine.finetune",
    "push_to_hub": "zoo.weights.publish", "save_pretrained": "zoo.weights.publish",
}

__all__ = [*_PUBLIC, "export", "__version__"]


def _load_families() -> None:
    import zoo.models  # noqa: F401  (registers every model and component)


def _pretrained_tags() -> dict:
    from zoo.weights.manifest import load_manifest

    return load_manifest().entries


_registry.set_family_loader(_load_families, sources=Path(__file__).with_name("models"))
_registry.set_pretrained_tags_provider(_pretrained_tags)


def __getattr__(name: str) -> Any:
    if name == "export":  # a module that is also callable: zoo.export(model, "model.onnx")
        _registry.load_families()
        return importlib.import_module("zoo.export")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    if _PUBLIC[name] != "zoo.registry":  # the registry imports the families itself, when it must
        _registry.load_families()
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
