"""Checkpoint layouts: read a file safely, recognise its layout, convert it to zoo keys.

Each model family declares the layouts it reads on its class, ``Detector.checkpoint_layouts`` (a tuple of
:class:`Layout`); loading detects the layout from the keys, so ``create_model(name, checkpoint_path=...)`` takes
any of them. ``"zoo"`` and ``"timm"`` (the model's own keys) are every model's layouts and are not declared.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from zoo.weights.manifest import OWN_LAYOUTS

__all__ = ["Layout", "ZOO_LAYOUT", "TIMM_LAYOUT", "layouts_of", "layout_names", "read_checkpoint", "unwrap_checkpoint",
           "convert_state_dict", "check_fit", "check_finite", "load_checkpoint", "load_torch_file", "LoadReport",
           "CheckpointError"]

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


#: zoo's own layout (``save_pretrained``, training checkpoints) and timm's: the model's own state dict keys
ZOO_LAYOUT, TIMM_LAYOUT = OWN_LAYOUTS


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout a family reads: ``detect(state_dict)`` looks at the keys only and says whether a state
    dict has this layout; ``convert(state_dict)`` returns it with zoo keys. ``name`` is what manifest entries and
    load reports call it (e.g. ``"official-rtdetr"``)."""
    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[StateDict], StateDict]


def layouts_of(model: object) -> tuple[Layout, ...]:
    """The layouts a model (an instance or a class) declares, or those of a registered family given by name."""
    if isinstance(model, str):
        from zoo.registry import family_class

        model = family_class(model)
    return tuple(getattr(model, "checkpoint_layouts", ()))


def layout_names(model: object) -> list[str]:
    """Names of the layouts ``model`` (instance, class or family name) reads: its own keys' (``zoo``, ``timm``), then
    those its family declares."""
    return [*OWN_LAYOUTS] + [layout.name for layout in layouts_of(model)]


def safetensors_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as safetensors stores it: contiguous CPU tensors, each tied tensor (DEIMv2's shared box head, tied
    heads) written once per key as its own copy, since safetensors refuses tensors that share memory."""
    out, seen = {}, set()
    for key, value in state.items():
        value = value.detach().to("cpu").contiguous()
        out[key] = value.clone() if value.numel() and value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    return out


def read_checkpoint(path: str | os.PathLike) -> StateDict:
    """Read a state dict without running code: safetensors (memory-mapped) or ``torch.load(weights_only=True)``.

    A pickle that would run code is refused by ``weights_only=True``; that, an empty, truncated or otherwise
    unreadable file is a :class:`CheckpointError` naming the file. Zip files (torch >= 1.6) are memory-mapped;
    the legacy (non-zip) format cannot be, and is read whole, with the same ``weights_only=True`` safety.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes); was the download or "
                              "the save interrupted? Save or download it again.")
    if path.suffix == ".safetensors" or is_safetensors(path):  # by content too: a safetensors file named .pth
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise CheckpointError(
                f"cannot read checkpoint {path} ({path.stat().st_size} bytes): not a valid safetensors file ({exc}). "
                "It is probably truncated or corrupt: save or download it again.") from exc
    return unwrap_checkpoint(load_torch_file(path), str(path))


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length that fits the file,
    then the header's JSON object (a torch zip starts with ``PK``, a legacy pickle with ``0x80``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8


def load_torch_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` (memory-mapped for zip files, whole for the legacy format); a file
    it refuses or cannot read is a :class:`CheckpointError` naming the file and what to do."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError for damaged files
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint that torch.load(weights_only=True) "
            f"accepts ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}). If it is truncated, save or "
            "download it again; if it holds objects other than tensors, convert it to safetensors from a trusted "
            "environment."
        ) from exc


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


def convert_state_dict(model: object, state_dict: StateDict, model_keys: set[str] | None = None
                       ) -> tuple[StateDict, str]:
    """Convert ``state_dict`` to zoo keys with the layouts of ``model`` (a detector, its class or a registered family
    name, see :func:`layouts_of`); returns ``(converted, layout name)``."""
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if model_keys is not None and keys <= model_keys:
        return dict(state_dict), ZOO_LAYOUT
    layouts = layouts_of(model)
    for layout in layouts:
        if layout.detect(state_dict):
            return layout.convert(dict(state_dict)), layout.name
    if model_keys is not None and _matches(state_dict, model_keys):
        return dict(state_dict), ZOO_LAYOUT  # nearly zoo keys: the strict load names what does not fit
    what = model if isinstance(model, str) else getattr(model, "family", "") or getattr(model, "__name__", "")
    sample = ", ".join(sorted(state_dict)[:5])
    raise CheckpointError(f"unrecognised checkpoint layout for a {what or 'zoo'} model (known layouts: "
                          f"{', '.join([ZOO_LAYOUT] + [layout.name for layout in layouts])}); first keys: {sample}")


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
    nonfinite: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"] + [f"{len(v)} {k}" for k, v in
                                                  (("adapted", self.adapted), ("re-initialised", self.reinitialized),
                                                   ("missing", self.missing), ("unexpected", self.unexpected),
                                                   ("with NaN/Inf", self.nonfinite)) if v]
        return f"{self.source} [{self.format}]: " + ", ".join(parts)


def _fill_counters(state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """BatchNorm ``num_batches_tracked`` counters do not affect outputs: add absent ones, drop unknown ones."""
    for key in [k for k in state_dict if k.endswith("num_batches_tracked") and k not in expected]:
        del state_dict[key]
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)


def check_fit(report: LoadReport, state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
               what: str, strict: bool = True) -> dict[str, torch.Tensor]:
    """Fit ``state_dict`` (zoo keys) to a model's ``expected`` state dict: BatchNorm counters are filled or dropped,
    missing / unexpected / mis-shaped keys are recorded in ``report`` and, when ``strict``, raised naming them.
    Returns what fits, in the model's dtypes. Keys listed in ``getattr(report, "dropped", ())`` are expected extras.
    Floating-point tensors are cast to the model's dtype (e.g. fp16 weights); an integer tensor where the model has
    floating point (or the reverse) is a mismatch, never cast: its values would not be the weights' values."""
    _fill_counters(state_dict, expected)
    report.missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in getattr(report, "dropped", ())]
    mismatched = [k for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    retyped = [k for k in state_dict if k in expected and k not in mismatched
               and state_dict[k].is_floating_point() != expected[k].is_floating_point()]
    report.unexpected = unexpected + mismatched + retyped
    if strict and (report.missing or report.unexpected):
        lines = [f"{(getattr(report, 'weights', '') or report.source)} ({report.format} layout) does not fit {what}:"]
        shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
        dtypes = [f"{k}: file {state_dict[k].dtype} vs model {expected[k].dtype}" for k in retyped]
        for title, keys in (("missing", report.missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                            ("dtype mismatch (not cast: a quantised or damaged file?)", dtypes)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        lines.append("  Are these weights for another architecture or model_args? To change the classes pass "
                     "num_classes or class_names; strict=False loads what fits and keeps the rest initialised.")
        raise CheckpointError("\n".join(lines))
    fit = {}
    for key, value in state_dict.items():
        if key in expected and value.shape == expected[key].shape and key not in retyped:
            dtype = expected[key].dtype
            fit[key] = value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    check_finite(report, fit, strict)
    return fit


def check_finite(report: LoadReport, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Record in ``report.nonfinite`` every floating-point tensor holding NaN or Inf (a diverged run or a damaged
    file: the model would predict nothing); strict: raise naming them, else warn."""
    report.nonfinite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if not report.nonfinite:
        return
    message = (f"{report.source}: {len(report.nonfinite)} tensors hold NaN or Inf: {', '.join(report.nonfinite)}. "
               "A model with these weights predicts nothing useful; was the training run diverging?")
    if strict:
        raise CheckpointError(message + " (strict=False loads them anyway, with a warning)")
    warnings.warn(message, stacklevel=3)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> LoadReport:
    """Read ``path``, detect and convert its layout, and load it strictly into ``model``."""
    expected = model.state_dict()
    converted, fmt = convert_state_dict(model, read_checkpoint(path), set(expected))
    report = LoadReport(source=str(path), format=fmt)
    what = f"{type(model).__name__} {getattr(model, 'config', {}).get('architecture', '')}".strip()
    model.load_state_dict(check_fit(report, converted, expected, what), strict=False)
    report.loaded = list(converted)
    return report
