"""torch.hub entry points for zoo: one per registered detector and alias, generated from the registry.

    model = torch.hub.load("OWNER/zoo:main", "rtdetr_r18vd", pretrained=True)        # from GitHub
    model = torch.hub.load("path/to/zoo", "rtdetr_mnv3", source="local", num_classes=3)

Every entry point takes ``pretrained`` (True or a tag), ``num_classes`` and ``zoo.create_model``'s keyword arguments;
its docstring lists the weights of the manifest (tags, repo, AP, parameters).
"""
dependencies = ["torch", "torchvision", "timm", "safetensors", "huggingface_hub", "einops"]


def _detectors() -> dict:
    """Registered names (and aliases) whose entry point returns a Detector, mapped to their canonical name."""
    import typing

    from zoo.models.base import Detector
    from zoo.registry import list_models, model_aliases, model_entrypoint

    def is_detector(name: str) -> bool:
        try:
            returns = typing.get_type_hints(model_entrypoint(name)).get("return")
        except NameError:  # an annotation that does not resolve: build it (on the meta device, no memory)
            import torch

            with torch.device("meta"):
                returns = type(model_entrypoint(name)())
        return isinstance(returns, type) and issubclass(returns, Detector)

    names = {name: name for name in list_models() if is_detector(name)}
    names.update({alias: target for alias, target in model_aliases().items() if target in names})
    return names


def _weights_doc(architecture: str) -> str:
    from zoo.weights.manifest import load_manifest
    from zoo.weights.sources import backbone_weights

    manifest = load_manifest()
    tags = manifest.tags(architecture)
    if not tags:
        backbone = backbone_weights(architecture)
        return "Pretrained weights: no detector weights in the manifest." + (
            f" pretrained_backbone=True loads the ImageNet weights {backbone.name} into the backbone."
            if backbone else "")
    default = manifest.default_tag(architecture)
    lines = [f"Pretrained weights (pretrained=True loads '{default}'):" if default else
             "Pretrained weights (none is the default: name the tag, pretrained='TAG'):"]
    for tag in tags:
        entry = manifest.resolve(architecture, tag)
        metrics = ", ".join(f"{m['metric']} {m['value']} ({m['provenance']})" for m in entry.metrics)
        c = entry.complexity
        gflops = f", {c['gflops']} GFLOPs" if c["gflops"] is not None else ""
        lines.append(f"  {tag}: {entry.where}, {entry.dataset}, {metrics}; "
                     f"{c['params_m']}M params{gflops} at {c['input_size'][0]}x{c['input_size'][1]}")
    return "\n".join(lines)


def _make_entrypoint(name: str, architecture: str):
    from zoo.registry import model_entrypoint

    def entrypoint(pretrained=False, num_classes=None, **kwargs):
        from zoo import create_model

        return create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)

    summary = (model_entrypoint(architecture).__doc__ or architecture).strip()
    alias = f"Alias of {architecture}.\n\n" if name != architecture else ""
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"{alias}{summary}\n\n{_weights_doc(architecture)}\n\n"
        "Args:\n"
        "    pretrained: True for the default weights, a tag for others, False for random initialisation.\n"
        "    num_classes: number of classes; differing from the weights' count re-initialises the class heads.\n"
        "    **kwargs: zoo.create_model arguments (class_names, checkpoint_path, num_queries, backbone, ...).\n")
    return entrypoint


globals().update({name: _make_entrypoint(name, arch) for name, arch in _detectors().items()})
