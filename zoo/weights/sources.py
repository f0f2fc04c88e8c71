"""Where weights come from: manifest entries, ``hf-hub:`` repos, ``local-dir:`` folders and ImageNet backbones.

Each source is resolved to a local file (zoo.weights.download) and loaded by zoo.weights.load.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from zoo.checks import check_model_args, check_pretrained_cfg
from zoo.registry import model_entrypoint, resolve_model_name
from zoo.weights.checkpoint import CheckpointError, check_fit, read_checkpoint
from zoo.weights.download import (WeightsIntegrityError, WeightsNotFoundError, fetch_file, fetch_weights, hash_policy,
                                  how_checked, verify_file)
from zoo.weights.load import PretrainedReport, WeightsSource, attach_report, build_with_weights
from zoo.weights.manifest import HubFile, WeightsEntry, load_manifest

log = logging.getLogger("zoo.weights")

__all__ = ["create_pretrained", "create_from_location", "load_pretrained_backbone", "backbone_weights",
           "CONFIG_NAME", "WEIGHTS_NAME"]

#: the files of a zoo model folder or Hub repo (written by zoo.save_pretrained)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


# --------------------------------------------------------------------------------------------------
# entry points (zoo.factory calls these)
# --------------------------------------------------------------------------------------------------

def create_pretrained(architecture: str, tag: str | None = None, num_classes: int | None = None,
                      class_names: Sequence[str] | None = None, pretrained_backbone: bool | str = False,
                      strict: bool = True, verify_cache: bool | None = None, **kwargs: Any) -> nn.Module:
    """``architecture`` with the manifest weights ``tag`` (None = its default tag).

    ``num_classes`` / ``class_names`` adapt the class heads; ``kwargs`` are architecture arguments (on top of the
    entry's ``model_args``); ``verify_cache``: how a cached file is hashed (None: when written since zoo last
    hashed it; True: always; False: sizes only; the default follows ``ZOO_VERIFY_CACHE``).
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
        notes = _verify_folder(folder, config, verify_cache)
        processor = folder / "preprocessor_config.json"
        return _build_from_config(config, WeightsSource(f"local-dir:{folder}", weights, 0, notes=notes), kwargs,
                                  options, processor if processor.is_file() else None)
    if source != "hf-hub":
        raise ValueError(f"unknown weights location {source!r}: use hf-hub:org/repo[@rev] or local-dir:/path")
    entry = load_manifest().find_repo(location)
    name = f"hf-hub:{location}" + (f"@{tag}" if tag else "")
    if entry is not None:  # a repo the manifest lists: its layout and classes
        if tag in (None, entry.hub.revision):
            return create_pretrained(entry.architecture, entry.tag, verify_cache=verify_cache, **options, **kwargs)
        hub = replace(entry.hub, revision=tag, sha256=None, size=None)  # the manifest hashes its revision only
        path = fetch_file(hub, name=name, verify_cache=verify_cache)
        note = f"{name}: another revision than the manifest's {entry.hub.revision!r}: {how_checked(path)}"
        source_ = replace(_entry_source(entry, path), name=name, notes=(note,))
        return build_with_weights(entry.architecture, {**entry.model_args, **kwargs}, source_, **options)
    config_path = fetch_file(HubFile(location, tag or "main", CONFIG_NAME, None, None), name=name, warn_unhashed=False)
    # a branch may move: take the weights from the very commit that config.json came from
    revision = config_path.parent.name if config_path.parent.parent.name == "snapshots" else (tag or "main")
    config = _read_config(config_path, name)
    recorded = config.get("files", {}).get(WEIGHTS_NAME, {})
    hub = HubFile(location, revision, WEIGHTS_NAME, recorded.get("sha256"), recorded.get("size"))
    path = fetch_file(hub, name=name, verify_cache=verify_cache)
    processor = None
    if "architecture" not in config:  # a transformers repo: its preprocessing, when it has one
        try:
            processor = fetch_file(HubFile(location, revision, "preprocessor_config.json", None, None), name=name,
                                   warn_unhashed=False)
        except WeightsNotFoundError:
            pass
    checked = (f"{path}: {how_checked(path)}" + ("" if recorded.get("sha256") else
               " (its config.json records no sha256)"),)
    return _build_from_config(config, WeightsSource(name, path, 0, hub_id=location, notes=checked), kwargs, options,
                              processor)


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
    report = PretrainedReport(source=str(path), format=entry.format, weights=entry.name,
                              notes=_hash_notes(entry, path))
    report.dropped = [k for k in state_dict if k not in expected]
    fit = check_fit(report, state_dict, expected, f"the {arch} backbone of {model.config['architecture']}")
    target.load_state_dict(fit, assign=True)
    report.loaded = [f"backbone.model.{k}" for k in expected]
    model.pretrained_cfg["backbone_weights"] = entry.name
    attach_report(model, report)
    return report


# --------------------------------------------------------------------------------------------------
# building and loading
# --------------------------------------------------------------------------------------------------

def _build_from_config(config: Mapping[str, Any], source: WeightsSource, kwargs: Mapping[str, Any],
                       options: Mapping[str, Any], processor: Path | None = None) -> nn.Module:
    """Build a zoo repo/folder: its config.json gives the architecture, arguments, classes and preprocessing.
    A transformers repo/folder (RT-DETR, RT-DETRv2, DETR) is built by zoo.weights.transformers_format."""
    if "architecture" not in config:
        from zoo.weights.transformers_format import build_transformers

        return build_transformers(config, source, kwargs, options, processor)
    model_args = config.get("model_args", {})
    if not isinstance(model_args, Mapping):
        raise CheckpointError(f"{source.name}: config.json model_args must be an object, got {model_args!r}")
    model_args = dict(model_args)
    source_classes = model_args.pop("num_classes", None)
    if not isinstance(source_classes, int):
        raise CheckpointError(f"{source.name}: config.json model_args has no num_classes")
    labels = config.get("label_names")
    try:  # the one validation of config values (zoo.models.base), naming the file
        check_model_args({**model_args, "num_classes": source_classes})
        check_pretrained_cfg({"label_names": labels}, source_classes, "label_names")
        check_pretrained_cfg(config.get("pretrained_cfg") or {}, None, "pretrained_cfg")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source.name}: config.json: {exc}") from None
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
    from zoo.weights.transformers_format import is_transformers_config, transformers_model_types

    if "architecture" not in config and not is_transformers_config(config):
        kind = f" (a transformers {config['model_type']!r} model)" if "model_type" in config else ""
        raise CheckpointError(
            f"{name} is not a zoo repo{kind}: its {CONFIG_NAME} names no 'architecture', is not a transformers "
            f"config of a model type zoo reads ({', '.join(transformers_model_types())}), and the weight manifest "
            f"does not list it. Load its file with create_model('<architecture>', checkpoint_path=...) instead.")
    return config


def _verify_folder(folder: Path, config: Mapping[str, Any], verify_cache: bool | None) -> tuple[str, ...]:
    """Check every file config.json records (sha256 and size, written by save_pretrained); returns report notes."""
    files = config.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(r, dict) for r in files.values()):
        raise CheckpointError(f"local-dir:{folder}: config.json 'files' must map file names to {{sha256, size}}, "
                              f"got {files!r}")
    outside = [name for name in files if not _inside(name)]
    if outside:
        raise CheckpointError(f"local-dir:{folder}: config.json 'files' names paths outside the folder: "
                              f"{', '.join(map(repr, outside))}; only files inside it can be recorded (nothing "
                              "was read)")
    if not files.get(WEIGHTS_NAME, {}).get("sha256"):
        note = f"{folder / WEIGHTS_NAME}: its config.json records no sha256, so it is loaded unverified"
        if "architecture" in config:
            advice = "save_pretrained records one: save the model again with it"
        else:  # the transformers layout has no place for a hash; zoo's own layout has
            advice = ("the transformers layout has no place for one; zoo.save_pretrained(model, folder) in zoo's "
                      "layout (the default format) records it")
        log.warning("local-dir:%s: %s (%s)", folder, note, advice)
        return (note,)
    full, reuse = hash_policy(verify_cache)
    for filename, record in files.items():
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"local-dir:{folder}: {filename} is recorded in its config.json but missing")
        problems = verify_file(path, record.get("sha256"), record.get("size"), full=full, reuse=reuse)
        if problems:
            raise WeightsIntegrityError(f"local-dir:{folder}: {path} does not match the sha256 and size recorded in "
                                        f"its config.json: {'; '.join(problems)}. The file was changed after "
                                        "save_pretrained wrote it; save it again or restore it.")
    return ()


def _inside(name: str) -> bool:
    """Whether a file name recorded in config.json stays inside its folder (relative, no ``..``)."""
    from pathlib import PurePosixPath, PureWindowsPath

    parts = PurePosixPath(name).parts
    return (bool(name) and not PurePosixPath(name).is_absolute() and not PureWindowsPath(name).is_absolute()
            and not PureWindowsPath(name).drive and ".." not in parts and ".." not in PureWindowsPath(name).parts)


def _entry_source(entry: WeightsEntry, path: Path) -> WeightsSource:
    return WeightsSource(entry.name, path, entry.num_classes, entry.label_names, entry.format,
                         entry.pretrained_cfg(), entry.hub_id, tuple(_hash_notes(entry, path)))


def _hash_notes(entry: WeightsEntry, path: Path) -> list[str]:
    """What the file was checked against, as this fetch did it (manifest, bundle, Hub, lock file or nothing)."""
    how = how_checked(path) or "not checked"
    if entry.sha256 is None:
        return [f"{entry.location} has no sha256 in the manifest: {how}"]
    return [f"{entry.location}: {how}"]


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
