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
"""
from zoo.weights.checkpoint import CheckpointError, LoadReport
from zoo.weights.download import (
    WeightsIntegrityError,
    WeightsNotCachedError,
    WeightsNotFoundError,
    fetch_file,
    fetch_weights,
)
from zoo.weights.load import PretrainedReport
from zoo.weights.manifest import Manifest, ManifestError, WeightsEntry, load_manifest
from zoo.weights.publish import model_card, push_to_hub, save_pretrained
from zoo.weights.sources import create_pretrained, load_pretrained_backbone

__all__ = ["load_manifest", "Manifest", "ManifestError", "WeightsEntry", "fetch_file", "fetch_weights",
           "WeightsIntegrityError", "WeightsNotFoundError", "WeightsNotCachedError", "CheckpointError", "LoadReport",
           "create_pretrained", "load_pretrained_backbone", "PretrainedReport", "save_pretrained", "push_to_hub",
           "model_card"]
