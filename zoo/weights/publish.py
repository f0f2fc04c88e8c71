"""Publish zoo models: ``save_pretrained`` (config.json, model.safetensors, README.md model card) and ``push_to_hub``.

The folder/repo layout is what ``create_model("local-dir:...")`` / ``create_model("hf-hub:...")`` read back:
config.json holds the architecture, its arguments, the label names, the preprocessing and the sha256 and size of
model.safetensors (checked when the weights are downloaded again).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from zoo.weights.checkpoint import safetensors_state
from zoo.weights.download import hub_endpoint, sha256_file
from zoo.weights.manifest import WeightsEntry, load_manifest
from zoo.weights.sources import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["save_pretrained", "push_to_hub", "model_card"]

#: manifest metric -> (Hub metric type, readable name)
_METRICS = {"box_ap": ("map", "COCO box mAP@[.5:.95]"), "box_ap50": ("map_50", "COCO box mAP@.5"),
            "top1": ("accuracy", "top-1 accuracy"), "top5": ("top_5_accuracy", "top-5 accuracy")}
#: manifest evaluation dataset -> (Hub dataset id, name, split)
_EVAL_DATASETS = {"coco-val2017": ("detection-datasets/coco", "COCO 2017", "validation"),
                  "imagenet-1k-val": ("imagenet-1k", "ImageNet-1k", "validation")}


def _config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or "architecture" not in config:
        raise TypeError(f"{type(model).__name__} has no zoo config ({{'architecture', 'model_args'}}); "
                        "save models made by zoo.create_model")
    if getattr(model, "deployed", False):
        raise ValueError(f"this {config['architecture']} model was deploy()ed: its BatchNorms and re-parameterised "
                         "blocks are folded into the convolutions, so no zoo model could load what it would save; "
                         "save it before calling deploy() (model.predict fuses a copy and leaves the model as it is)")
    return dict(config)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *, repo_id: str | None = None,
                    metrics: Sequence[Mapping[str, Any]] | None = None, model_card: bool = True,
                    format: str = "zoo") -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card.

    Args:
        format: ``"zoo"``, or ``"transformers"`` for the Hugging Face transformers layout (RT-DETR, RT-DETRv2,
            DETR; config.json, model.safetensors and preprocessor_config.json, see zoo.weights.transformers_format).
        repo_id: the Hub repo the folder is for (used in the card's usage examples).
        metrics: manifest-style metric records for the card (see :func:`model_card`).
        model_card: write README.md.
    """
    from safetensors.torch import save_file

    from zoo.version import __version__

    config = _config(model)
    if format == "transformers":
        from zoo.weights.transformers_format import save_transformers

        return save_transformers(model, save_directory)
    if format != "zoo":
        raise ValueError(f"format must be 'zoo' or 'transformers', got {format!r}")
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = safetensors_state(model.state_dict())
    # one metadata key: safetensors orders several in a per-process random order, and a published file must be
    # byte-identical when its tensors are (config.json beside it names the architecture and zoo version)
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    weights = folder / WEIGHTS_NAME
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    document = {
        "architecture": config["architecture"],
        "model_args": config.get("model_args", {}),
        "num_classes": config.get("model_args", {}).get("num_classes"),
        "label_names": cfg.get("label_names"),
        "pretrained_cfg": cfg,
        "library_name": "zoo",
        "zoo_version": __version__,
        "files": {WEIGHTS_NAME: {"sha256": sha256_file(weights), "size": weights.stat().st_size}},
    }
    (folder / CONFIG_NAME).write_text(json.dumps(_jsonable(document), indent=2) + "\n", encoding="utf-8")
    if model_card:
        (folder / "README.md").write_text(_card(model, repo_id, metrics), encoding="utf-8")
    return folder


def push_to_hub(model: nn.Module, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None, create_pr: bool = False,
                metrics: Sequence[Mapping[str, Any]] | None = None, endpoint: str | None = None,
                format: str = "zoo") -> Any:
    """Create ``repo_id`` if needed and upload ``save_pretrained``'s files in one commit (``format`` as there).

    ``revision`` is an existing branch (default main); ``endpoint`` defaults to ``HF_ENDPOINT``. Returns
    huggingface_hub's ``CommitInfo`` (``.oid`` is the commit, ``.commit_url`` its page).
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint or hub_endpoint(), token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        save_pretrained(model, tmp, repo_id=repo_id, metrics=metrics, format=format)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload {_config(model)['architecture']} with zoo")


def _source_entry(model: nn.Module) -> tuple[WeightsEntry | None, bool]:
    """The manifest entry the weights came from, and whether they are those very weights (not adapted)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    entries = load_manifest().entries
    if cfg.get("weights") in entries:
        return entries[cfg["weights"]], True
    return entries.get(cfg.get("base_weights")), False


def model_card(model: nn.Module, repo_id: str | None = None,
               metrics: Sequence[Mapping[str, Any]] | None = None) -> str:
    """A README.md with Hub front matter (library_name, tags, license, datasets, pipeline_tag, base_model,
    model-index) and a body with usage, parameters, GFLOPs, metrics and citation.

    ``metrics`` (manifest metric records) default to the manifest's metrics when the model holds exactly the weights
    of a manifest entry; a model whose classes were adapted (or that you changed) has none until you pass yours.
    """
    return _card(model, repo_id, metrics)


def _card(model: nn.Module, repo_id: str | None, metrics: Sequence[Mapping[str, Any]] | None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    from zoo.registry import model_entrypoint

    config = _config(model)
    arch = config["architecture"]
    entry, exact = _source_entry(model)
    if metrics is None:
        metrics = list(entry.metrics) if entry is not None and exact else []
    task = "object-detection" if hasattr(model, "postprocess") else "image-classification"  # a Detector
    name = repo_id or arch
    datasets = [d for d in (entry.dataset, entry.pretrain_dataset) if d] if entry else None
    base_model = entry.hub_id if entry is not None and entry.hub_id != repo_id else None
    results = []
    for m in metrics:
        metric_type, metric_name = _METRICS.get(m["metric"], (m["metric"], m["metric"]))
        dataset_type, dataset_name, split = _EVAL_DATASETS.get(m["dataset"], (m["dataset"], m["dataset"], None))
        results.append(EvalResult(task_type=m.get("task", task), dataset_type=dataset_type, dataset_name=dataset_name,
                                  dataset_split=split, metric_type=metric_type, metric_name=metric_name,
                                  metric_value=m["value"], source_name=m.get("provenance"),
                                  source_url=m.get("source")))
    family = getattr(model, "family", "") or "timm"
    data = ModelCardData(library_name="zoo", license=entry.license if entry else None,
                         tags=["zoo", task, family, "safetensors"], datasets=datasets, pipeline_tag=task,
                         base_model=base_model, model_name=name, eval_results=results or None)
    doc = (model_entrypoint(arch).__doc__ or arch).strip().splitlines()[0]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    labels = cfg.get("label_names") or []
    load = f'"hf-hub:{repo_id}"' if repo_id else '"local-dir:/path/to/this/folder"'
    lines = [f"---\n{data.to_yaml()}\n---", "", f"# {name}", "", doc, ""]
    if entry is not None:
        how = "these are" if exact else "fine-tuned or adapted from"
        lines += [f"Weights: {how} `{entry.name}` ({entry.hub_id or 'bundled with zoo'}, {entry.origin['title']}).", ""]
        if entry.notes:
            lines += [entry.notes, ""]
    lines += ["## Usage", "", "```python", "import zoo", "", f"model = zoo.create_model({load}).eval()"]
    if task == "object-detection":
        lines += ['detections = model.predict("image.jpg")  # boxes (xyxy pixels), scores, labels, label_names']
    lines += ["```", "", "With torch.hub (zoo's hubconf.py; a GitHub 'owner/zoo:ref' or a local clone):", "",
              "```python", "import torch", "from huggingface_hub import hf_hub_download", "",
              f'weights = hf_hub_download("{repo_id or "ORG/REPO"}", "{WEIGHTS_NAME}")',
              f'model = torch.hub.load("path/to/zoo", "{arch}", source="local", '
              f'num_classes={config["model_args"].get("num_classes")}, checkpoint_path=weights)',
              "```", "", "## Model details", "", "| | |", "|---|---|", f"| architecture | `{arch}` |",
              f"| parameters | {params:.2f}M |"]
    complexity = _complexity(arch, entry)
    if complexity:
        lines.append(f"| GFLOPs | {complexity['gflops']} at {complexity['input_size'][0]}x"
                     f"{complexity['input_size'][1]} ({complexity['provenance']}) |")
    if cfg.get("input_size"):
        lines.append(f"| input | {cfg['input_size'][1]}x{cfg['input_size'][2]}, resize `{cfg.get('resize_mode')}`, "
                     f"mean {cfg.get('mean')}, std {cfg.get('std')} |")
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    lines.append(f"| classes | {config['model_args'].get('num_classes')}" + (f": {shown}" if labels else "") + " |")
    if entry is not None:
        lines.append(f"| license | {entry.license} |")
    if metrics:
        lines += ["", "## Metrics", "", "| dataset | metric | value | provenance |", "|---|---|---|---|"]
        lines += [f"| {m['dataset']} | {_METRICS.get(m['metric'], (0, m['metric']))[1]} | {m['value']} | "
                  f"{m['provenance']} ([source]({m['source']})) |" for m in metrics]
    if entry is not None:
        paper = entry.origin["paper"]
        arxiv = paper.rstrip("/").rsplit("/", 1)[-1]
        lines += ["", "## Citation", "", "```bibtex", f"@misc{{arxiv_{arxiv.replace('.', '_')},",
                  f"  title = {{{entry.origin['title']}}},", f"  eprint = {{{arxiv}}},", "  archivePrefix = {arXiv},",
                  f"  url = {{{paper}}}", "}", "```", "", f"Upstream code: {entry.origin['repo']}"]
    return "\n".join(lines) + "\n"


def _complexity(arch: str, entry: WeightsEntry | None) -> Mapping[str, Any] | None:
    """GFLOPs from the manifest (the source entry, else the architecture's default entry); counting them needs a
    forward pass at full resolution, which saving a model should not cost."""
    if entry is not None and entry.architecture == arch:
        return entry.complexity
    manifest = load_manifest()
    tag = manifest.default_tag(arch)
    return manifest.resolve(arch, tag).complexity if tag else None

