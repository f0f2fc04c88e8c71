"""Zoo models in the Hugging Face transformers layout, both ways.

Writing: ``model.save_pretrained(dir, format="transformers")`` writes ``config.json`` (the family's transformers
config, ``id2label`` from the model's class names), ``model.safetensors`` with the transformers key names and
``preprocessor_config.json`` (the model's preprocessing as the family's image processor), so
``AutoModelForObjectDetection.from_pretrained(dir)`` and ``pipeline("object-detection", model=dir)`` load it.

Reading: a ``local-dir:`` folder or ``hf-hub:`` repo whose config.json has a transformers ``model_type`` that a
registered zoo family declares is built as the matching zoo architecture, with the class names from ``id2label`` and
the preprocessing from ``preprocessor_config.json``; the weights convert through the family's key table.

A family declares its :class:`TransformersMapping` on its class (``Detector.transformers``); this module finds it
there (zoo.registry.list_families) and imports no transformers.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from zoo.data.coco_names import label_names_for
from zoo.registry import family_class, list_families
from zoo.weights.checkpoint import safetensors_state

__all__ = ["TransformersMapping", "UnrepresentableConfigError", "transformers_model_types", "save_transformers",
           "is_transformers_config", "transformers_spec", "build_transformers", "pretrained_cfg_from_processor",
           "require", "PROCESSOR_NAME"]

PROCESSOR_NAME = "preprocessor_config.json"
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL codes, as transformers' image processors store them


class UnrepresentableConfigError(ValueError):
    """A zoo model that the transformers class cannot express (or the reverse); the message names the field."""


def require(condition: bool, field: str, why: str) -> None:
    """Raise :class:`UnrepresentableConfigError` naming ``field`` unless ``condition``."""
    if not condition:
        raise UnrepresentableConfigError(f"{field}: {why}")


@dataclass(frozen=True)
class TransformersMapping:
    """How one zoo family maps to transformers (declared on the family's class as ``Detector.transformers``).

    ``model_types``: the transformers ``model_type`` values it reads; ``processor_class`` / ``pad``: the image
    processor written with it; ``to_transformers(model)`` -> ``(config dict without labels, state dict in the
    transformers layout)``; ``from_transformers(config)`` -> ``(architecture, model_args without num_classes)``;
    ``weight_format(config)`` is the checkpoint layout name its weights must have (one of the family's
    ``checkpoint_layouts``); ``check(model, config)`` validates the built model.
    """
    model_types: tuple[str, ...]
    processor_class: str
    pad: bool
    to_transformers: Callable[[nn.Module], tuple[dict[str, Any], dict[str, torch.Tensor]]]
    from_transformers: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]
    weight_format: Callable[[Mapping[str, Any]], str]
    check: Callable[[nn.Module, Mapping[str, Any]], None] = lambda model, config: None


def _mappings() -> dict[str, TransformersMapping]:
    """family name -> its transformers mapping, for every registered family that declares one."""
    classes = {name: family_class(name) for name in list_families()}
    return {name: cls.transformers for name, cls in classes.items() if getattr(cls, "transformers", None) is not None}


def transformers_model_types() -> list[str]:
    """The transformers ``model_type`` values zoo reads (those the registered families declare)."""
    return sorted(t for mapping in _mappings().values() for t in mapping.model_types)


def _family_of_model(model: nn.Module) -> TransformersMapping:
    mapping = getattr(model, "transformers", None)
    if mapping is None:
        family = getattr(model, "family", "")
        raise UnrepresentableConfigError(
            f"{type(model).__name__} ({family or 'no family'}): transformers has no class for it; "
            f"format='transformers' supports {', '.join(sorted(_mappings()))}")
    return mapping


def _family_of_config(config: Mapping[str, Any]) -> TransformersMapping | None:
    return next((m for m in _mappings().values() if config.get("model_type") in m.model_types), None)


def is_transformers_config(config: Mapping[str, Any]) -> bool:
    """True for a transformers config.json of a model type zoo reads (:func:`transformers_model_types`)."""
    return "architecture" not in config and _family_of_config(config) is not None


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

def save_transformers(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json in the transformers layout."""
    from safetensors.torch import save_file

    from zoo.version import __version__

    family = _family_of_model(model)
    config, state = family.to_transformers(model)
    names = label_names_for(model)
    config.update(id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)},
                  zoo_architecture=model.config["architecture"], zoo_version=__version__)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(safetensors_state(state), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    processor = _processor_config(getattr(model, "pretrained_cfg", {}) or {}, family)
    (folder / PROCESSOR_NAME).write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    return folder


def _processor_config(cfg: Mapping[str, Any], family: TransformersMapping) -> dict[str, Any]:
    """zoo ``pretrained_cfg`` -> the image processor's preprocessor_config.json."""
    mode = cfg.get("resize_mode", "stretch")
    if mode == "stretch":
        _, height, width = cfg.get("input_size", (3, 640, 640))
        size = {"height": int(height), "width": int(width)}
    elif mode == "shortest_edge":
        size = {"shortest_edge": int(cfg["shortest_edge"]), "longest_edge": int(cfg["longest_edge"])}
    else:
        raise UnrepresentableConfigError(f"pretrained_cfg.resize_mode: {mode!r} has no transformers image processor")
    interpolation = cfg.get("interpolation", "bilinear")
    require(interpolation in _RESAMPLE, "pretrained_cfg.interpolation",
            f"{interpolation!r} is not one of {sorted(_RESAMPLE)}")
    mean, std = cfg.get("mean"), cfg.get("std")
    return {
        "image_processor_type": family.processor_class, "format": "coco_detection",
        "do_resize": True, "size": size, "resample": _RESAMPLE[interpolation],
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": mean is not None, "image_mean": list(mean or (0.0, 0.0, 0.0)),
        "image_std": list(std or (1.0, 1.0, 1.0)), "do_pad": family.pad, "do_convert_annotations": True,
    }


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

def transformers_spec(config: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any], int, tuple[str, ...], str]:
    """A transformers config.json -> ``(architecture, model_args, num_classes, label names, weight format)``."""
    family = _family_of_config(config)
    if family is None:
        raise UnrepresentableConfigError(f"{name}: model_type {config.get('model_type')!r} is not one zoo reads")
    with _naming(name, config):
        architecture, model_args = family.from_transformers(config)
    id2label = config.get("id2label") or {}
    num_classes = int(config.get("num_labels", len(id2label)) if not id2label else len(id2label))
    labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_classes))
    return architecture, model_args, num_classes, labels, family.weight_format(config)


def build_transformers(config: Mapping[str, Any], source: Any, kwargs: Mapping[str, Any],
                       options: Mapping[str, Any], processor: Path | None) -> nn.Module:
    """Build the zoo model of a transformers folder/repo (``source``: its WeightsSource) with its weights."""
    from dataclasses import replace

    from zoo.weights.load import build_with_weights

    architecture, model_args, num_classes, labels, fmt = transformers_spec(config, source.name)
    doc = json.loads(processor.read_text(encoding="utf-8")) if processor is not None else None
    source = replace(source, num_classes=num_classes, label_names=labels, format=fmt,
                     pretrained_cfg=pretrained_cfg_from_processor(doc))
    model = build_with_weights(architecture, {**model_args, **kwargs}, source, **options)
    check_built(model, config, source.name)
    return model


def check_built(model: nn.Module, config: Mapping[str, Any], name: str) -> None:
    """Family checks that need the built model (e.g. a timm backbone's feature indices)."""
    with _naming(name, config):
        _family_of_config(config).check(model, config)


@contextmanager
def _naming(name: str, config: Mapping[str, Any]) -> Iterator[None]:
    """Prefix an UnrepresentableConfigError with the folder/repo and its model type."""
    try:
        yield
    except UnrepresentableConfigError as exc:
        raise UnrepresentableConfigError(f"{name}: zoo cannot build this {config['model_type']} model: {exc}") from None


def pretrained_cfg_from_processor(processor: Mapping[str, Any] | None) -> dict[str, Any]:
    """preprocessor_config.json -> zoo ``pretrained_cfg`` entries (empty when there is none)."""
    if not processor:
        return {}
    require(processor.get("do_rescale", True) and abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) < 1e-9,
            "preprocessor_config.do_rescale", "zoo scales pixels by 1/255 before normalising")
    size = processor.get("size") or {}
    cfg: dict[str, Any] = {}
    if "height" in size and "width" in size:
        cfg.update(resize_mode="stretch", input_size=(3, int(size["height"]), int(size["width"])))
    elif "shortest_edge" in size:
        longest = int(size.get("longest_edge", 1333))
        cfg.update(resize_mode="shortest_edge", shortest_edge=int(size["shortest_edge"]), longest_edge=longest,
                   input_size=(3, int(size["shortest_edge"]), longest))
    resample = {v: k for k, v in _RESAMPLE.items()}.get(processor.get("resample", 2), "bilinear")
    normalize = processor.get("do_normalize", True)
    cfg.update(interpolation=resample,
               mean=tuple(processor["image_mean"]) if normalize and "image_mean" in processor else None,
               std=tuple(processor["image_std"]) if normalize and "image_std" in processor else None)
    return cfg
