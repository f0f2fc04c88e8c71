"""Low-memory, strict loading of a weight file into a freshly built model, with class-head adaptation.

The model is built with its weights on the meta device (no parameter memory), the safetensors file is
memory-mapped, converted to zoo keys and assigned to the model (``load_state_dict(assign=True)``), so the weights
exist once, backed by the file's pages. A different ``num_classes`` keeps everything but the class heads
(``Detector.class_heads``), which are re-initialised with the prior-probability bias; ``class_names`` that are
pretrained labels keep their rows. Every load is strict: any key not explained by such a rule is an error that
names it. The report of what happened is attached to the model as ``model.load_report`` and logged on the
``zoo.weights`` logger.
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zoo.layers.init import prior_prob_bias
from zoo.checks import check_pretrained_cfg
from zoo.registry import model_entrypoint
from zoo.weights.checkpoint import (CheckpointError, LoadReport, check_fit, convert_state_dict, layout_names,
                                   read_checkpoint)

__all__ = ["build_with_weights", "WeightsSource", "PretrainedReport", "attach_report", "check_declared_layout"]

log = logging.getLogger("zoo.weights")


@dataclass
class PretrainedReport(LoadReport):
    """A :class:`LoadReport` plus the weights' name, keys a rule left unused (``dropped``) and notes."""
    weights: str = ""
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.weights}: " + super().__str__()
        if self.dropped:
            text += f", {len(self.dropped)} dropped"
        return text + "".join(f"\n  note: {n}" for n in self.notes)


@dataclass(frozen=True)
class WeightsSource:
    """A local weight file and what it holds (its classes, declared layout and preprocessing)."""
    name: str
    path: Path
    num_classes: int
    label_names: tuple[str, ...] | None = None
    format: str | None = None
    pretrained_cfg: Mapping[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    notes: tuple[str, ...] = ()


def build_with_weights(architecture: str, model_args: Mapping[str, Any], source: WeightsSource,
                       num_classes: int | None = None, class_names: Sequence[str] | None = None,
                       strict: bool = True) -> nn.Module:
    """Build ``architecture`` with its weights on the meta device and assign the converted (and, for other classes,
    adapted) tensors of ``source``; see the module docstring for the rules."""
    target_classes, rows = _class_plan(source, num_classes, class_names)
    args = {**model_args, "num_classes": target_classes}
    entrypoint = model_entrypoint(architecture)
    model = _lean_build(entrypoint, args)
    expected = model.state_dict()
    check_declared_layout(model, source)
    converted, fmt = convert_state_dict(model, read_checkpoint(source.path), set(expected))
    if source.format and fmt not in (source.format, "zoo"):
        raise CheckpointError(f"{source.name}: declared as {source.format} but {source.path} has the {fmt} layout")
    report = PretrainedReport(source=str(source.path), format=fmt, weights=source.name, notes=list(source.notes))
    if rows is not None:
        _adapt_class_heads(model, converted, rows, source.num_classes, report)
    fit = check_fit(report, converted, expected, architecture, strict)
    if report.missing:  # strict=False: what the file lacks needs the model's own initialisation
        model = entrypoint(**args)
    model.load_state_dict(fit, strict=False, assign=True)
    if _meta_tensors(model):  # tensors outside the state dict (non-persistent buffers) left uninitialised
        model = entrypoint(**args)
        model.load_state_dict(fit, strict=False, assign=True)
    leftover = _meta_tensors(model)
    if leftover:
        raise CheckpointError(f"{source.name}: {len(leftover)} tensors were not set: {', '.join(leftover[:8])}")
    explained = set(report.adapted) | set(report.reinitialized)
    report.loaded = [k for k in fit if k not in explained]
    # preprocessing (and lineage) of the source; which weights and labels these are is decided here
    model.pretrained_cfg.update({k: v for k, v in _tuples(source.pretrained_cfg).items()
                                 if k not in ("weights", "label_names")})
    names = list(class_names) if class_names is not None else source.label_names if rows is None else None
    model.pretrained_cfg["label_names"] = list(names) if names is not None else None
    check_pretrained_cfg(model.pretrained_cfg, target_classes, f"{source.name}: preprocessing")
    model.pretrained_cfg["weights" if rows is None else "base_weights"] = source.name
    if source.hub_id:
        model.pretrained_cfg["hf_hub_id"] = source.hub_id
    attach_report(model, report)
    return model


def check_declared_layout(model: nn.Module, source: WeightsSource) -> None:
    """The layout ``source`` declares (a manifest entry's ``format``) must be one the model's family declares
    (``Detector.checkpoint_layouts``) or zoo's own; checked before the file is read."""
    known = layout_names(model)
    if source.format and source.format not in known:
        family = getattr(model, "family", "") or type(model).__name__
        raise CheckpointError(f"{source.name}: declared as the {source.format!r} layout, which the {family} family "
                              f"does not read (its layouts: {', '.join(known)}); fix the entry's format")


def _class_plan(source: WeightsSource, num_classes: int | None, class_names: Sequence[str] | None
                ) -> tuple[int, list[int | None] | None]:
    """``(classes of the new model, row in the checkpoint for each new class or None)``; rows None = unchanged."""
    if class_names is not None:
        if isinstance(class_names, str) or not class_names or not all(isinstance(n, str) for n in class_names):
            raise TypeError(f"class_names must be a non-empty list of strings, got {class_names!r}")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {list(class_names)}")
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
        if source.label_names is None:
            raise ValueError(f"{source.name} records no label names, so class_names cannot be matched to its "
                             "classes; pass num_classes to re-initialise the class heads instead")
        index: dict[str, int] = {}
        for i, name in enumerate(source.label_names):
            index.setdefault(name, i)
        rows = [index.get(name) for name in class_names]
        return len(rows), None if rows == list(range(source.num_classes)) else rows
    if num_classes is None or num_classes == source.num_classes:
        return source.num_classes, None
    return num_classes, [None] * num_classes


def _adapt_class_heads(model: nn.Module, state_dict: dict[str, torch.Tensor], rows: list[int | None],
                       source_classes: int, report: PretrainedReport) -> None:
    """Replace class-head tensors in ``state_dict``: rows of kept classes are copied, the others re-initialised
    (the module's default init, bias = prior-probability bias), rows after the classes are copied."""
    heads = getattr(model, "class_heads", ())
    if not heads:
        raise CheckpointError(f"cannot change the classes of a {type(model).__name__} model: it declares no class "
                              "heads (Detector.class_heads)")
    modules = [(name, module, head) for name, module in model.named_modules() for head in heads
               if re.fullmatch(head.module, name)]
    if not modules:
        raise CheckpointError(f"no module of this {type(model).__name__} matches its declared class heads "
                              f"({', '.join(h.module for h in heads)})")
    kept = [r for r in rows if r is not None]
    for name, module, head in modules:
        fresh = copy.deepcopy(module).to_empty(device="cpu")
        fresh.reset_parameters()
        if isinstance(getattr(fresh, "bias", None), torch.Tensor):
            nn.init.constant_(fresh.bias, prior_prob_bias(0.01))
        for param, new in fresh.state_dict().items():
            key = f"{name}.{param}"
            old = state_dict.get(key)
            if old is None:
                continue
            if old.shape[0] != source_classes + head.extra_rows:
                raise CheckpointError(f"{key} has {old.shape[0]} rows; the weights declare {source_classes} classes "
                                      f"(+{head.extra_rows} extra rows)")
            # in the fresh module's dtype: re-initialised rows must not pass through a half-precision file's dtype
            for i, j in enumerate(rows):
                if j is not None:
                    new[i] = old[j]
            new[len(rows):] = old[source_classes:]
            state_dict[key] = new
            (report.adapted if kept else report.reinitialized).append(key)
    added = len(rows) - len(kept)
    report.notes.append(f"class heads: {len(kept)} of {len(rows)} classes keep their pretrained rows, "
                        f"{added} {'is' if added == 1 else 'are'} new (re-initialised)")


class _WeightsOnMeta(TorchFunctionMode):
    """``torch.empty`` with two or more dimensions (the storage layers allocate their weights with, before
    initialising them) goes to the meta device: building costs no weight memory, while small vectors (norms,
    biases) and buffers computed from values (``torch.tensor``, ``arange``) stay real."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty and kwargs.get("device") is None:
            size = kwargs.get("size", args[0] if len(args) == 1 and isinstance(args[0], Sequence) else args)
            if len(size) >= 2:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _lean_build(entrypoint: Any, args: Mapping[str, Any]) -> nn.Module:
    """Build without allocating the weights; a layer that reads its weights while being built gets a normal build."""
    try:
        with _WeightsOnMeta():
            return entrypoint(**args)
    except (NotImplementedError, RuntimeError) as exc:  # e.g. "Cannot copy out of meta tensor"
        log.debug("meta-device build failed (%s); building normally", exc)
        return entrypoint(**args)


def _meta_tensors(model: nn.Module) -> list[str]:
    """Names of tensors still on the meta device: parameters, buffers and plain tensor attributes."""
    named = [*model.named_parameters(), *model.named_buffers()]
    named += [(f"{m}.{k}".lstrip("."), v) for m, mod in model.named_modules() for k, v in vars(mod).items()
              if isinstance(v, torch.Tensor)]
    return [name for name, tensor in named if tensor.is_meta]


def _tuples(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) and k != "label_names" else v for k, v in cfg.items()}


def attach_report(model: nn.Module, report: PretrainedReport) -> None:
    model.load_report = report
    log.info("%s", report)
    for title, keys in (("adapted", report.adapted), ("re-initialised", report.reinitialized)):
        if keys:
            log.info("  %s: %s", title, ", ".join(keys))


