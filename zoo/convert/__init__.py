"""Checkpoint formats: read a file safely, recognise its layout, convert it to zoo keys.

Each model family registers the layouts it understands with :func:`register_format`; loading detects
the layout from the keys, so ``create_model(name, checkpoint_path=...)`` takes any of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

__all__ = ["register_format", "read_checkpoint", "unwrap_checkpoint", "convert_state_dict", "load_checkpoint",
           "LoadReport", "CheckpointError"]

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class _Format:
    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[StateDict], StateDict]


_formats: dict[str, list[_Format]] = {}


def register_format(family: str, name: str, detect: Callable[[Mapping[str, torch.Tensor]], bool],
                    convert: Callable[[StateDict], StateDict]) -> None:
    """Register checkpoint layout ``name`` for model ``family``; ``detect`` looks at the keys only."""
    _formats.setdefault(family, []).append(_Format(name, detect, convert))


def read_checkpoint(path: str | os.PathLike) -> StateDict:
    """Read a state dict without running code: safetensors (memory-mapped) or ``torch.load(weights_only=True)``.

    A pickle that would run code is refused by ``weights_only=True`` and reported as a CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # UnpicklingError for unsafe pickles, RuntimeError for non-zip files
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint that torch.load(weights_only=True) "
            f"accepts ({type(exc).__name__}: {str(exc).splitlines()[0]}). Convert it to safetensors from a "
            "trusted environment."
        ) from exc
    return unwrap_checkpoint(obj, str(path))


def unwrap_checkpoint(obj: object, source: str = "checkpoint") -> StateDict:
    """Find the state dict inside the usual wrappers: ``{'ema': {'module': sd}}``, ``{'model': sd}``, ``{'state_dict': sd}``."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in ("ema", "module", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            raise CheckpointError(f"{source}: no state dict found (top-level keys: {sorted(obj)[:10]})")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def convert_state_dict(family: str, state_dict: StateDict, model_keys: set[str] | None = None) -> tuple[StateDict, str]:
    """Convert ``state_dict`` to zoo keys for ``family``; returns ``(converted, format_name)``."""
    _load_family_formats()
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if model_keys is not None and keys <= model_keys:
        return dict(state_dict), "zoo"
    for fmt in _formats.get(family, []):
        if fmt.detect(state_dict):
            return fmt.convert(dict(state_dict)), fmt.name
    if model_keys is not None and _matches(state_dict, model_keys):
        return dict(state_dict), "zoo"  # nearly zoo keys: the strict load names what does not fit
    known = ", ".join(["zoo"] + [f.name for f in _formats.get(family, [])])
    sample = ", ".join(sorted(state_dict)[:5])
    raise CheckpointError(f"unrecognised checkpoint layout for a {family} model (known layouts: {known}); "
                          f"first keys: {sample}")


def _matches(state_dict: Mapping[str, torch.Tensor], model_keys: set[str]) -> bool:
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    return len(keys & model_keys) >= 0.9 * max(len(keys), 1)


@dataclass
class LoadReport:
    """What a load did: which format, which keys were loaded, adapted, re-initialised, missing or unexpected."""
    source: str = ""
    format: str = ""
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"] + [f"{len(v)} {k}" for k, v in
                                                  (("adapted", self.adapted), ("re-initialised", self.reinitialized),
                                                   ("missing", self.missing), ("unexpected", self.unexpected)) if v]
        return f"{self.source} [{self.format}]: " + ", ".join(parts)


def load_state_dict_strict(model: torch.nn.Module, state_dict: StateDict, report: LoadReport) -> LoadReport:
    """Load ``state_dict`` (zoo keys) into ``model``; anything missing, unexpected or mis-shaped is an error.

    ``num_batches_tracked`` counters are the one thing allowed to be absent (they do not affect outputs).
    """
    expected = model.state_dict()
    report.missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if report.missing or report.unexpected or mismatched:
        lines = [f"checkpoint {report.source} ({report.format} layout) does not fit {type(model).__name__}"
                 f" {getattr(model, 'config', {}).get('architecture', '')}:"]
        for title, keys in (("missing", report.missing), ("unexpected", report.unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        lines.append("  Is it a checkpoint for another architecture or num_classes? "
                     "Pass the matching model name (or num_classes) to create_model.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=False)
    report.loaded = [k for k in state_dict]
    return report


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> LoadReport:
    """Read ``path``, detect and convert its layout, and load it strictly into ``model``."""
    state_dict = read_checkpoint(path)
    family = getattr(model, "family", "")
    converted, fmt = convert_state_dict(family, state_dict, set(model.state_dict()))
    return load_state_dict_strict(model, converted, LoadReport(source=str(path), format=fmt))


def _load_family_formats() -> None:
    import zoo.convert.detr  # noqa: F401
    import zoo.convert.rtdetr  # noqa: F401  (registers its formats)
