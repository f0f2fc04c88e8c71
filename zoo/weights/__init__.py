"""Pretrained weights: the manifest, verified Hub downloads, safe checkpoint reading, low-memory loading and publishing.

- :mod:`zoo.weights.manifest`: ``weights_manifest.json`` (schema, validation, ``load_manifest``).
- :mod:`zoo.weights.download`: huggingface_hub downloads with sha256/size checks, offline errors and a file lock.
- :mod:`zoo.weights.checkpoint`: reading files without running code, checkpoint layouts, strict fitting.
- :mod:`zoo.weights.sources`: ``create_model(..., pretrained=...)``, ``hf-hub:`` / ``local-dir:`` and backbones.
- :mod:`zoo.weights.load`: meta-device building, class-head adaptation and load reports.
- :mod:`zoo.weights.publish`: ``save_pretrained``, ``push_to_hub`` and model cards.
- Trust (docs/weights.md, "The trust model"): :mod:`zoo.weights.hashing` (sha256, remembered for unchanged files),
  :mod:`zoo.weights.hub_metadata` (the Hub's LFS sha256), :mod:`zoo.weights.lock` (trust on first use),
  :mod:`zoo.weights.pin` (``zoo weights lock``), :mod:`zoo.weights.cache` (the zoo cache folder).

The public names below are imported on first use: reading the manifest (``zoo list --pretrained``) needs no torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module under zoo.weights that defines it
_PUBLIC = {
    "CheckpointError": "checkpoint", "LoadReport": "checkpoint",
    "WeightsIntegrityError": "download", "WeightsNotCachedError": "download", "WeightsNotFoundError": "download",
    "fetch_file": "download", "fetch_weights": "download",
    "PretrainedReport": "load",
    "Manifest": "manifest", "ManifestError": "manifest", "WeightsEntry": "manifest", "load_manifest": "manifest",
    "model_card": "publish", "push_to_hub": "publish", "save_pretrained": "publish",
    "create_pretrained": "sources", "load_pretrained_backbone": "sources",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'zoo.weights' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zoo.weights.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
