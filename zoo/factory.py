"""``create_model``: build any registered model by name, optionally with weights."""
from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from zoo.registry import model_entrypoint, resolve_model_name

__all__ = ["create_model", "create_model_from_config", "parse_model_name"]


def parse_model_name(name: str) -> tuple[str, str, str | None]:
    """Split a model name into ``(source, architecture_or_location, tag)``.

    ``"rtdetr_r18vd"`` -> ("zoo", "rtdetr_r18vd", None); ``"rtdetr_r18vd.coco_o365"`` -> (..., "coco_o365");
    ``"hf-hub:org/repo@rev"`` -> ("hf-hub", "org/repo", "rev"); ``"local-dir:/path"`` -> ("local-dir", "/path", None).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith("hf-hub:"):
        repo, _, rev = name[len("hf-hub:"):].partition("@")
        return "hf-hub", repo, rev or None
    if name.startswith("local-dir:"):
        return "local-dir", name[len("local-dir:"):], None
    arch, _, tag = name.partition(".")
    return "zoo", arch, tag or None


def create_model(
    model_name: str,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    pretrained_backbone: bool | str = False,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model.

    Args:
        model_name: a registered name or alias (``zoo.list_models()``), optionally ``name.tag`` to pick
            pretrained weights, ``hf-hub:org/repo[@revision]`` or ``local-dir:/path`` (a ``save_pretrained`` folder;
            these load their own weights: ``checkpoint_path``, ``pretrained_backbone`` or a tag are errors).
        pretrained: ``True`` for the default weights, or a tag such as ``"coco_o365"``.
        num_classes: number of classes; with pretrained weights for another count, the class heads are adapted.
        checkpoint_path: a local checkpoint in any known layout (zoo, official, transformers), loaded strictly.
        pretrained_backbone: load ImageNet weights (from the manifest) into a timm backbone: ``True`` for the
            default tag of the backbone's timm model, or a tag. Used for detectors without detector weights.
        **kwargs: architecture overrides routed to the right component (``num_queries=100``,
            ``eval_idx=2``, ``num_decoder_layers=4``, ``backbone="resnet50d"``, ``decoder={...}``).
    """
    source, location, tag = parse_model_name(model_name)
    if source != "zoo":
        ignored = [f"{k}={v!r}" for k, v in (("pretrained", pretrained), ("checkpoint_path", checkpoint_path),
                                              ("pretrained_backbone", pretrained_backbone))
                   if v not in (None, False) and not (k == "pretrained" and v is True)]
        if ignored:  # the location names the weights; these would be dropped silently
            raise ValueError(f"{model_name!r} loads the weights it names; {', '.join(ignored)} cannot apply to it. "
                             "Pass only the name (pretrained=True is accepted and changes nothing), or build the "
                             "architecture by its registered name to load other weights.")
        from zoo.weights.sources import create_from_location

        return create_from_location(source, location, tag, num_classes=num_classes, **kwargs)
    if not location or "/" in model_name or "\\" in model_name:  # "../../etc/passwd" read as "" with tag "./../.."
        raise ValueError(f"unknown model {model_name!r}: a model name is a registered name (zoo.list_models()), "
                         "optionally name.tag, 'hf-hub:org/repo' or 'local-dir:/path' (a save_pretrained folder); "
                         "not a file path")
    architecture = resolve_model_name(location)
    if tag is not None:
        if pretrained not in (False, True, tag):
            raise ValueError(f"conflicting weights: tag {tag!r} in the name and pretrained={pretrained!r}")
        pretrained = tag
    if sum(map(bool, (pretrained, checkpoint_path is not None, pretrained_backbone))) > 1:
        raise ValueError("pass only one of pretrained=..., checkpoint_path=... and pretrained_backbone=...")
    if pretrained:
        from zoo.weights.sources import create_pretrained

        return create_pretrained(architecture, None if pretrained is True else str(pretrained),
                                 num_classes=num_classes, **kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = model_entrypoint(architecture)(**kwargs)
    if checkpoint_path is not None:
        from zoo.weights.checkpoint import load_checkpoint

        model.load_report = load_checkpoint(model, checkpoint_path)
    if pretrained_backbone:
        from zoo.weights.sources import load_pretrained_backbone

        model.load_report = load_pretrained_backbone(model, pretrained_backbone)
    return model


def create_model_from_config(config: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild a model from its ``model.config`` (``{"architecture", "model_args"}``), e.g. a Hub config.json."""
    if not isinstance(config, Mapping) or "architecture" not in config:
        raise ValueError("config must be a mapping with an 'architecture' key (and optional 'model_args')")
    args = {**dict(config.get("model_args", {})), **overrides}
    return create_model(config["architecture"], **args)
