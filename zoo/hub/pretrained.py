"""Build models with pretrained weights: manifest entries, Hub repos, local folders and ImageNet backbones.

Loading is low-memory: the model is built with its weights on the meta device (no parameter memory), the
safetensors file is memory-mapped, converted to zoo keys and assigned to the model (``load_state_dict(assign=True)``),
so the weights exist once, backed by the file's pages. A different ``num_classes`` keeps everything but the class
heads, which are re-initialised with the prior-probability bias; ``class_names`` that are pretrained labels keep
their rows. Every load is strict: any key not explained by such a rule is an error that names it. The report of what
happened is attached to the model as ``model.load_report`` and logged on the ``zoo.hub`` logger.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zoo.convert import CheckpointError, LoadReport, convert_state_dict, read_checkpoint
from zoo.decoders.rtdetr_decoder import prior_prob_bias
from zoo.hub.download import fetch_file, fetch_weights, verify_file
from zoo.hub.manifest import HubFile, WeightsEntry, load_manifest
from zoo.registry import model_entrypoint, resolve_model_name

__all__ = ["create_pretrained", "create_from_location", "load_pretrained_backbone", "backbone_weights",
           "build_with_weights",
           "WeightsSource", "PretrainedReport", "ClassHead", "register_class_heads", "CONFIG_NAME", "WEIGHTS_NAME"]

log = logging.getLogger("zoo.hub")

#: the files of a zoo model folder or Hub repo (written by zoo.save_pretrained)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass(frozen=True)
class ClassHead:
    """A module whose output rows are the classes: ``module`` is a regex on its name; ``extra_rows`` trailing rows
    are not classes (DETR's no-object logit, RT-DETR's denoising padding embedding) and are always kept."""
    module: str
    extra_rows: int = 0


_CLASS_HEADS: dict[str, tuple[ClassHead, ...]] = {
    "rtdetr": (ClassHead(r"decoder\.enc_score_head"), ClassHead(r"decoder\.dec_score_head\.\d+"),
               ClassHead(r"decoder\.denoising_class_embed", extra_rows=1)),
    "detr": (ClassHead(r"class_embed", extra_rows=1),),
}


def register_class_heads(family: str, heads: Iterable[ClassHead]) -> None:
    """Declare the class heads of a model family, so that its weights adapt to another ``num_classes``."""
    _CLASS_HEADS[family] = tuple(heads)


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


# --------------------------------------------------------------------------------------------------
# entry points (zoo.factory calls these)
# --------------------------------------------------------------------------------------------------

def create_pretrained(architecture: str, tag: str | None = None, num_classes: int | None = None,
                      class_names: Sequence[str] | None = None, pretrained_backbone: bool | str = False,
                      strict: bool = True, verify_cache: bool | None = None, **kwargs: Any) -> nn.Module:
    """``architecture`` with the manifest weights ``tag`` (None = its default tag).

    ``num_classes`` / ``class_names`` adapt the class heads; ``kwargs`` are architecture arguments (on top of the
    entry's ``model_args``); ``verify_cache`` re-hashes a cached file (default ``ZOO_VERIFY_CACHE``).
    """
    if pretrained_backbone:
        raise ValueError("pretrained weights already include the backbone; pass either pretrained=... "
                         "or pretrained_backbone=..., not both")
    manifest = load_manifest()
    if tag is None and manifest.default_tag(architecture) is None:
        named = ", ".join(f"{architecture}.{t}" for t in manifest.tags(architecture))
        only = (f" Its only weights are not general {architecture} weights (e.g. a demo of another width) and must "
                f"be named: {named}." if named else "")
        raise KeyError(f"no default pretrained weights for {architecture!r} in {manifest.path}."
                       f"{_backbone_hint(architecture)}{only} `zoo weights list` shows the weights there are.")
    entry = manifest.resolve(architecture, tag)
    path = fetch_weights(entry, verify_cache=verify_cache)
    source = _entry_source(entry, path)
    return build_with_weights(architecture, {**entry.model_args, **kwargs}, source, num_classes=num_classes,
                              class_names=class_names, strict=strict)


def create_from_location(source: str, location: str, tag: str | None, num_classes: int | None = None,
                         class_names: Sequence[str] | None = None, strict: bool = True,
                         verify_cache: bool | None = None, **kwargs: Any) -> nn.Module:
    """Build a model from ``hf-hub:org/repo[@revision]`` or ``local-dir:/path`` (a ``save_pretrained`` folder).

    A Hub repo that the manifest lists (e.g. ``PekingU/rtdetr_r18vd``) loads as that entry; any other repo must be
    a zoo repo (``config.json`` naming the architecture, and ``model.safetensors``).
    """
    options = dict(num_classes=num_classes, class_names=class_names, strict=strict)
    if source == "local-dir":
        if tag is not None:
            raise ValueError("local-dir: locations take no @revision")
        folder = Path(location).expanduser()
        config = _read_config(folder / CONFIG_NAME, f"local-dir:{location}")
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"local-dir:{location} has no {WEIGHTS_NAME} (save_pretrained writes one)")
        recorded = config.get("files", {}).get(WEIGHTS_NAME, {})
        problems = verify_file(weights, recorded.get("sha256"), recorded.get("size"), full=bool(verify_cache))
        if problems:
            raise CheckpointError(f"{weights} does not match its config.json: {'; '.join(problems)}")
        return _build_from_config(config, WeightsSource(f"local-dir:{folder}", weights, 0), kwargs, options)
    if source != "hf-hub":
        raise ValueError(f"unknown weights location {source!r}: use hf-hub:org/repo[@rev] or local-dir:/path")
    entry = load_manifest().find_repo(location)
    name = f"hf-hub:{location}" + (f"@{tag}" if tag else "")
    if entry is not None:  # a repo the manifest lists: its layout and classes
        if tag in (None, entry.hub.revision):
            return create_pretrained(entry.architecture, entry.tag, verify_cache=verify_cache, **options, **kwargs)
        hub = replace(entry.hub, revision=tag, sha256=None, size=None)  # the manifest hashes its revision only
        source_ = replace(_entry_source(entry, fetch_file(hub, name=name, verify_cache=verify_cache)), name=name,
                          notes=(f"{name}: another revision than the manifest's {entry.hub.revision!r}, not hashed",))
        return build_with_weights(entry.architecture, {**entry.model_args, **kwargs}, source_, **options)
    config_path = fetch_file(HubFile(location, tag or "main", CONFIG_NAME, None, None), name=name, warn_unhashed=False)
    # a branch may move: take the weights from the very commit that config.json came from
    revision = config_path.parent.name if config_path.parent.parent.name == "snapshots" else (tag or "main")
    config = _read_config(config_path, name)
    recorded = config.get("files", {}).get(WEIGHTS_NAME, {})
    hub = HubFile(location, revision, WEIGHTS_NAME, recorded.get("sha256"), recorded.get("size"))
    path = fetch_file(hub, name=name, verify_cache=verify_cache)
    return _build_from_config(config, WeightsSource(name, path, 0, hub_id=location), kwargs, options)


def load_pretrained_backbone(model: nn.Module, weights: bool | str = True, verify_cache: bool | None = None
                             ) -> PretrainedReport:
    """Load ImageNet weights from the manifest into a detector's timm backbone (``model.backbone.model``).

    ``weights``: True for the default tag of the backbone's timm model, or a tag / ``architecture.tag``. The file's
    classifier head (unused by a features-only backbone) is dropped; every backbone key must be in the file.
    """
    spec = (getattr(model, "config", None) or {}).get("model_args", {}).get("backbone")
    if not isinstance(spec, Mapping) or spec.get("name") != "timm":
        name = spec.get("name") if isinstance(spec, Mapping) else spec
        raise ValueError(f"pretrained_backbone loads ImageNet weights into timm backbones; this model's backbone is "
                         f"{name!r}. Use pretrained=... for detector weights, or checkpoint_path=...")
    arch, tag = spec["model_name"], None if weights is True else str(weights)
    if tag is not None and "." in tag:
        arch_in_tag, tag = tag.split(".", 1)
        if arch_in_tag != arch:
            raise ValueError(f"backbone weights {weights!r} are for {arch_in_tag}, but the backbone is {arch}")
    manifest = load_manifest()
    if not manifest.tags(arch):
        raise KeyError(f"the manifest has no ImageNet weights for the backbone {arch!r}; "
                       f"backbones with weights: {', '.join(_timm_architectures(manifest))}")
    entry = manifest.resolve(arch, tag)
    if entry.format != "timm":
        raise ValueError(f"{entry.name} is in the {entry.format} layout; backbone weights must be timm weights")
    path = fetch_weights(entry, verify_cache=verify_cache)
    target = model.backbone.model
    state_dict, expected = read_checkpoint(path), target.state_dict()
    report = PretrainedReport(source=str(path), format=entry.format, weights=entry.name, notes=_hash_notes(entry))
    report.dropped = [k for k in state_dict if k not in expected]
    _fill_counters(state_dict, expected)
    fit = _check_fit(report, state_dict, expected, f"the {arch} backbone of {model.config['architecture']}")
    target.load_state_dict(fit, assign=True)
    report.loaded = [f"backbone.model.{k}" for k in expected]
    model.pretrained_cfg["backbone_weights"] = entry.name
    _attach(model, report)
    return report


# --------------------------------------------------------------------------------------------------
# building and loading
# --------------------------------------------------------------------------------------------------

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
    converted, fmt = convert_state_dict(getattr(model, "family", ""), read_checkpoint(source.path), set(expected))
    if source.format and fmt not in (source.format, "zoo"):
        raise CheckpointError(f"{source.name}: declared as {source.format} but {source.path} has the {fmt} layout")
    report = PretrainedReport(source=str(source.path), format=fmt, weights=source.name, notes=list(source.notes))
    if rows is not None:
        _adapt_class_heads(model, converted, rows, source.num_classes, report)
    _fill_counters(converted, expected)
    fit = _check_fit(report, converted, expected, architecture, strict)
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
    model.pretrained_cfg["weights" if rows is None else "base_weights"] = source.name
    if source.hub_id:
        model.pretrained_cfg["hf_hub_id"] = source.hub_id
    _attach(model, report)
    return model


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
    family = getattr(model, "family", "")
    heads = _CLASS_HEADS.get(family)
    if not heads:
        raise CheckpointError(f"cannot change the classes of a {family or type(model).__name__} model: its class "
                              "heads are not declared (zoo.hub.pretrained.register_class_heads)")
    modules = [(name, module, head) for name, module in model.named_modules() for head in heads
               if re.fullmatch(head.module, name)]
    if not modules:
        raise CheckpointError(f"no module of this {family} model matches its declared class heads "
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


def _fill_counters(state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """BatchNorm ``num_batches_tracked`` counters do not affect outputs: add absent ones, drop unknown ones."""
    for key in [k for k in state_dict if k.endswith("num_batches_tracked") and k not in expected]:
        del state_dict[key]
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)


def _check_fit(report: PretrainedReport, state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
               what: str, strict: bool = True) -> dict[str, torch.Tensor]:
    """Record missing / unexpected / mis-shaped keys; strict: raise naming them. Returns what fits, in model dtypes."""
    report.missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in report.dropped]
    mismatched = [k for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    report.unexpected = unexpected + mismatched
    if strict and (report.missing or report.unexpected):
        lines = [f"{report.weights} ({report.format} layout) does not fit {what}:"]
        shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
        for title, keys in (("missing", report.missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        lines.append("  Are these weights for another architecture or model_args? To change the classes pass "
                     "num_classes or class_names; strict=False loads what fits and keeps the rest initialised.")
        raise CheckpointError("\n".join(lines))
    fit = {}
    for key, value in state_dict.items():
        if key in expected and value.shape == expected[key].shape:
            dtype = expected[key].dtype
            fit[key] = value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    return fit


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


def _build_from_config(config: Mapping[str, Any], source: WeightsSource, kwargs: Mapping[str, Any],
                       options: Mapping[str, Any]) -> nn.Module:
    """Build a zoo repo/folder: its config.json gives the architecture, arguments, classes and preprocessing."""
    model_args = dict(config.get("model_args", {}))
    source_classes = model_args.pop("num_classes", None)
    if not isinstance(source_classes, int):
        raise CheckpointError(f"{source.name}: config.json model_args has no num_classes")
    labels = config.get("label_names")
    source = replace(source, num_classes=source_classes, format="zoo",
                     label_names=tuple(labels) if labels else None, pretrained_cfg=config.get("pretrained_cfg", {}))
    architecture = resolve_model_name(config["architecture"])
    return build_with_weights(architecture, {**model_args, **kwargs}, source, **options)


def _read_config(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{name} has no {CONFIG_NAME}; a zoo model folder is written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{name}: {CONFIG_NAME} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{name}: {CONFIG_NAME} must hold a JSON object")
    if "architecture" not in config:
        kind = f" (a transformers {config['model_type']!r} model)" if "model_type" in config else ""
        raise CheckpointError(
            f"{name} is not a zoo repo{kind}: its {CONFIG_NAME} names no 'architecture' and the weight manifest does "
            f"not list it. Load its file with create_model('<architecture>', checkpoint_path=...) instead.")
    return config


def _entry_source(entry: WeightsEntry, path: Path) -> WeightsSource:
    return WeightsSource(entry.name, path, entry.num_classes, entry.label_names, entry.format,
                         entry.pretrained_cfg(), entry.hub_id, tuple(_hash_notes(entry)))


def _hash_notes(entry: WeightsEntry) -> list[str]:
    if entry.sha256 is None:
        return [f"{entry.location} is a third-party file without a sha256 in the manifest: loaded unverified"]
    return []


def _tuples(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) and k != "label_names" else v for k, v in cfg.items()}


def _attach(model: nn.Module, report: PretrainedReport) -> None:
    model.load_report = report
    log.info("%s", report)
    for title, keys in (("adapted", report.adapted), ("re-initialised", report.reinitialized)):
        if keys:
            log.info("  %s: %s", title, ", ".join(keys))


def _timm_architectures(manifest: Any) -> list[str]:
    return list(dict.fromkeys(e.architecture for e in manifest.entries.values() if e.format == "timm"))


@lru_cache(maxsize=None)
def _default_backbone(architecture: str) -> Any:
    with torch.device("meta"):  # the architecture's default config, without allocating it
        return model_entrypoint(architecture)().config["model_args"].get("backbone")


def backbone_weights(architecture: str) -> WeightsEntry | None:
    """The default ImageNet weights for the timm backbone of ``architecture`` (None when it has none)."""
    spec = _default_backbone(architecture)
    manifest = load_manifest()
    if isinstance(spec, Mapping) and spec.get("name") == "timm" and manifest.default_tag(spec.get("model_name", "")):
        entry = manifest.resolve(spec["model_name"])
        return entry if entry.format == "timm" else None
    return None


def _backbone_hint(architecture: str) -> str:
    """For detectors without detector weights: say whether their backbone has ImageNet weights."""
    entry = backbone_weights(architecture)
    if entry is None:
        return ""
    return (f" Its backbone has ImageNet weights: create_model({architecture!r}, pretrained_backbone=True) "
            f"loads {entry.name}.")
