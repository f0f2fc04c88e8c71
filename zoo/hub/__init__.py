"""Pretrained weights: the manifest, verified Hub downloads, low-memory loading and publishing.

- :mod:`zoo.hub.manifest`: ``weights_manifest.json`` (schema, validation, ``load_manifest``).
- :mod:`zoo.hub.download`: huggingface_hub downloads with sha256/size checks, offline errors and a file lock.
- :mod:`zoo.hub.pretrained`: ``create_model(..., pretrained=...)``, ``hf-hub:`` / ``local-dir:`` and backbones.
- :mod:`zoo.hub.publish`: ``save_pretrained``, ``push_to_hub`` and model cards.
"""
from zoo.hub.download import (
    WeightsIntegrityError,
    WeightsNotCachedError,
    WeightsNotFoundError,
    fetch_file,
    fetch_weights,
)
from zoo.hub.manifest import Manifest, ManifestError, WeightsEntry, load_manifest
from zoo.hub.pretrained import PretrainedReport, create_pretrained, load_pretrained_backbone
from zoo.hub.publish import model_card, push_to_hub, save_pretrained

__all__ = ["load_manifest", "Manifest", "ManifestError", "WeightsEntry", "fetch_file", "fetch_weights",
           "WeightsIntegrityError", "WeightsNotFoundError", "WeightsNotCachedError", "create_pretrained",
           "load_pretrained_backbone", "PretrainedReport", "save_pretrained", "push_to_hub", "model_card"]
