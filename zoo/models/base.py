"""What every zoo detector shares: its config, its preprocessing config, and how it is built from parts."""
from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from zoo.checks import check_model_args, check_num_classes, check_pretrained_cfg  # check_num_classes: public here
from zoo.layers.topk import topk_lowest_index
from zoo.registry import COMPONENT_KINDS, _components, get_component

if TYPE_CHECKING:
    from zoo.weights.checkpoint import Layout
    from zoo.weights.transformers_format import TransformersMapping

__all__ = ["Detector", "AnchorQueries", "ClassHead", "build_detector", "build_component", "part_builder", "check_num_classes",
           "check_pixel_values", "boxes_to_pixels", "detections_to_pixels", "sigmoid_topk", "PretrainedCfg"]

#: Preprocessing a model expects (``zoo`` follows timm's ``pretrained_cfg`` naming).
PretrainedCfg = dict


@dataclass(frozen=True)
class ClassHead:
    """A module whose output rows are the classes: ``module`` is a regex on its name; ``extra_rows`` trailing rows
    are not classes (DETR's no-object logit, RT-DETR's denoising padding embedding) and are always kept. Loading
    weights for other classes adapts exactly these modules (zoo.weights.load)."""
    module: str
    extra_rows: int = 0


class Detector(nn.Module):
    """Base class of zoo detectors: what the rest of zoo (predict, evaluate, trainer, weights, export) may ask of a
    model. A family subclasses it, declares itself on the class and registers the class with
    ``@zoo.registry.register_family``; nothing outside the family's folder names it.

    A family provides ``forward(pixel_values, ...)`` -> ``{"pred_logits", "pred_boxes"}`` and declares:
      ``family``: its name (export metadata and model cards record it; ``register_family`` files the class under it);
      ``postprocess(outputs, target_sizes, score_threshold, top_k)`` and its batched, traceable part, the static
      method ``select_detections(outputs, top_k)``, which an exported ``postprocess=True`` graph and the
      onnxruntime backend run;
      :meth:`criterion`, :meth:`training_inputs`, ``train_defaults`` and ``train_recipes``: its training recipe
      (and named alternatives, e.g. D-FINE's "deim");
      ``class_heads``: the modules whose rows are classes;
      ``checkpoint_layouts``: the other layouts its checkpoints come in (zoo.weights.checkpoint.Layout);
      ``transformers``: how it maps to a Hugging Face transformers class (zoo.weights.transformers_format), if any.

    Attributes set by :func:`build_detector`:
      ``config``: ``{"architecture": name, "model_args": {...}}``, JSON-serialisable; passing it to
      :func:`zoo.create_model_from_config` rebuilds an identical architecture.
      ``pretrained_cfg``: input size, resize mode, mean/std (or None) and interpolation used for inference.
    """

    #: the family's name: the key it is registered under (zoo.registry.register_family) and a tag on model cards
    family: str = ""
    #: modules whose rows are classes (adapted when weights are loaded for other classes)
    class_heads: tuple[ClassHead, ...] = ()
    #: training recipe defaults of the family (TrainConfig fields), applied where the user set nothing
    train_defaults: dict[str, Any] = {}
    #: named alternative recipes (``zoo train --recipe NAME``): TrainConfig fields over ``train_defaults``, and
    #: ``criterion``: keyword arguments of :meth:`criterion`
    train_recipes: dict[str, dict[str, Any]] = {}
    #: checkpoint layouts besides zoo's own that the family reads (official releases, transformers), detected by keys
    checkpoint_layouts: tuple["Layout", ...] = ()
    #: the family's mapping to and from a transformers class (None: transformers has none)
    transformers: "TransformersMapping | None" = None
    #: parts the family always builds from the same class, by config key (``{"decoder": RTDETRDecoder}``): built
    #: directly, without a registry lookup; their config spec keeps the class's ``component_name`` as its
    #: ``name``, so config.json reads the same. Other parts (backbones) have alternatives and are looked up.
    parts: dict[str, type] = {}
    config: dict
    pretrained_cfg: dict
    #: set by :meth:`deploy`: the model is fused for inference and cannot train
    deployed: bool = False

    @property
    def num_classes(self) -> int:
        return int(self.config["model_args"]["num_classes"])

    def build_part(self, kind: str, spec: Mapping[str, Any], **injected: Any) -> nn.Module:
        """Build the ``kind`` part from its config spec ``{"name": ..., **args}`` plus arguments the detector injects
        (see :attr:`parts` and :func:`part_builder`)."""
        return part_builder(type(self), kind, spec)(**{k: v for k, v in spec.items() if k != "name"}, **injected)

    def build_parts(self, backbone: Mapping[str, Any], encoder: Mapping[str, Any], decoder: Mapping[str, Any],
                    num_classes: int) -> None:
        """``self.backbone -> self.encoder -> self.decoder`` (the RT-DETR lineage), each part given the channels and
        strides of the one before it and the decoder the class count."""
        self.backbone = self.build_part("backbone", backbone)
        self.encoder = self.build_part("encoder", encoder, in_channels=self.backbone.out_channels,
                                       strides=self.backbone.strides)
        self.decoder = self.build_part("decoder", decoder, in_channels=self.encoder.out_channels,
                                       num_classes=num_classes)

    def criterion(self) -> nn.Module:
        """The family's training loss: ``criterion(outputs, targets)`` -> dict of weighted terms to sum."""
        raise NotImplementedError(f"{type(self).__name__} does not define a training criterion")

    def training_inputs(self, pixel_values: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Extra ``forward`` arguments for a training step (e.g. RT-DETR's denoising queries, DETR's pixel mask).

        targets: per image ``{"labels", "boxes"}`` (normalised cxcywh) and optionally ``"size"`` ``(h, w)``, the
        valid (unpadded) region of the image in ``pixel_values``."""
        return {}

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`zoo.engine.validate.UsageError` when the model cannot run on ``height`` x ``width`` inputs
        (before its padding to ``size_divisor``), naming the smallest size that works. Every positive size works
        here; a family with a lower bound (RT-DETR's query selection) overrides it. Prediction, evaluation and
        training call it through :meth:`zoo.data.images.Preprocess.from_model`, so a bad size fails before any work."""

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any:
        """Write config.json, model.safetensors and a README.md model card (see zoo.weights.publish.save_pretrained)."""
        from zoo.weights.publish import save_pretrained

        return save_pretrained(self, save_directory, **kwargs)

    @torch.no_grad()
    def deploy(self, channels_last: bool = False) -> "Detector":
        """Prepare for inference: fuse re-parameterisable blocks (RepVGG), fold every BatchNorm that follows a
        convolution into it and swap slow kernels for equal ones (zoo.layers.fusion); outputs are unchanged up to
        float rounding (<= 1e-5 relative). Also keeps freed activations in the process's heap for the next call
        (:func:`zoo.engine.inference.tune_cpu_allocator`, glibc only; ``ZOO_CPU_ALLOCATOR=default`` turns it off).

        The state dict keys of fused blocks change and the model can no longer train, so load weights first
        (``model.predict`` does this on a cached copy and leaves the model as it is). ``channels_last=True`` also
        switches to channels-last memory: convolutions run faster on CPU and GPU, outputs move by float
        rounding only. Returns self in eval mode.
        """
        from zoo.engine.inference import tune_cpu_allocator
        from zoo.layers.fusion import rewrite_for_deploy

        tune_cpu_allocator()
        self.eval()
        for module in list(self.modules()):
            if module is not self and hasattr(module, "fuse_for_deploy"):
                module.fuse_for_deploy()
            else:
                rewrite_for_deploy(module)
        self.deployed = True
        return self.to(memory_format=torch.channels_last) if channels_last else self

    def predict(self, images: Any, score_threshold: float = 0.5, top_k: int = 100, batch_size: int = 8,
                device: Any = None, input_size: int | tuple[int, int] | None = None, stream: bool = False,
                slice: tuple[int, int] | None = None, overlap: float = 0.2) -> Any:
        """Detect objects in images (paths, PIL images, HWC uint8 arrays, CHW tensors; one or a list), using the
        preprocessing of ``pretrained_cfg``. Returns ``Detections`` (a list for a list); see zoo.engine.predict.
        A video file, webcam index or stream URL (zoo.engine.video, the ``video`` extra) gives a list of per-frame
        detections, or with ``stream=True`` a generator that decodes ``batch_size`` frames at a time.
        ``slice=(height, width)`` detects small objects in large images tile by tile, neighbouring tiles sharing
        ``overlap`` of a tile (zoo.engine.slicing)."""
        from zoo.data.video import is_video_source
        from zoo.engine.predict import predict
        from zoo.engine.video import predict_stream

        options = dict(score_threshold=score_threshold, top_k=top_k, batch_size=batch_size, device=device,
                       input_size=input_size)
        if slice is not None:
            from zoo.engine.slicing import predict_sliced

            if stream or is_video_source(images) or (isinstance(images, (list, tuple))
                                                     and any(is_video_source(image) for image in images)):
                raise ValueError("slice applies to images, not to videos or streams")
            return predict_sliced(self, images, slice=slice, overlap=overlap, **options)
        if is_video_source(images):
            frames = predict_stream(self, images, **options)
            return frames if stream else list(frames)
        if stream:
            raise ValueError("stream=True is for a video file, a webcam index or a stream URL; pass images without it")
        if isinstance(images, (list, tuple)) and any(is_video_source(image) for image in images):
            raise ValueError("videos are predicted one at a time (model.predict('clip.mp4')), not in a list of images")
        return predict(self, images, **options)

    def track(self, source: Any, tracker: Any = "bytetrack", stream: bool = False, score_threshold: float = 0.3,
              top_k: int = 100, batch_size: int = 8, device: Any = None,
              input_size: int | tuple[int, int] | None = None, tracker_args: dict[str, Any] | None = None) -> Any:
        """Detect and track objects in a video, webcam, stream URL or list of frames: per-frame ``Detections`` whose
        ``track_ids`` follow each object (a list, or with ``stream=True`` a generator). ``tracker`` is
        "bytetrack", "sort", "ocsort" (Roboflow's ``trackers``, the ``track`` extra) or a
        ``zoo.engine.track.Tracker``; see :func:`zoo.engine.track.track`."""
        from zoo.engine.track import track

        frames = track(self, source, tracker=tracker, tracker_args=tracker_args, score_threshold=score_threshold,
                       top_k=top_k, batch_size=batch_size, device=device, input_size=input_size)
        return frames if stream else list(frames)


class SigmoidTopK:
    """Postprocessing of the detectors trained with sigmoid (focal-style) class scores (RT-DETR, D-FINE, DEIMv2,
    LW-DETR / RF-DETR: the official ``PostProcessor`` of each): the best (query, class) pairs overall."""

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], target_sizes: torch.Tensor, score_threshold: float = 0.0,
                    top_k: int = 300) -> list[dict[str, torch.Tensor]]:
        """Sigmoid, top-k over queries x classes, boxes to xyxy pixels of ``target_sizes`` ``[B, 2]`` (height,
        width) of the original images; per image ``boxes``, ``scores`` and ``labels`` (class indices), sorted."""
        return detections_to_pixels(*self.select_detections(outputs, top_k), target_sizes, score_threshold)

    @staticmethod
    def select_detections(outputs: dict[str, torch.Tensor], top_k: int = 300
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batched part of :meth:`postprocess` (also what an exported ``postprocess=True`` graph runs):
        ``(boxes [B, K, 4] normalised cxcywh, scores [B, K], labels [B, K])``, the top ``K = min(top_k, Q * C)``
        (query, class) pairs by sigmoid score, sorted."""
        return sigmoid_topk(outputs, top_k)


class AnchorQueries:
    """For detectors whose decoder selects its ``num_queries`` queries from one anchor per feature-map cell (the
    RT-DETR lineage): an input too small to hold that many cells is a usage error naming the smallest size."""

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of every level the decoder reads for an input of ``height`` x ``width`` (padded to the largest
        stride, as ``model.predict`` pads it): the backbone's levels, then the decoder's extra stride-2 levels."""
        d = self.size_divisor
        height, width = -(-height // d) * d, -(-width // d) * d
        sizes = [(height // s, width // s) for s in self.backbone.strides]
        while len(sizes) < self.decoder.num_levels:
            sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
        return sizes

    def check_input_size(self, height: int, width: int) -> None:
        """Query selection takes the ``num_queries`` best of one anchor per feature-map cell: an input whose feature
        maps hold fewer cells than queries cannot run (torch says only "selected index k out of range")."""
        from zoo.engine.validate import UsageError

        def anchors(h: int, w: int) -> int:
            return sum(a * b for a, b in self.feature_sizes(h, w))

        queries = self.decoder.num_queries
        if anchors(height, width) >= queries:
            return
        smallest = self.size_divisor
        while anchors(smallest, smallest) < queries:
            smallest += self.size_divisor
        maps = ", ".join(f"{a}x{b}" for a, b in self.feature_sizes(height, width))
        raise UsageError(f"input size {height}x{width} is too small for {self.config['architecture']}: its feature "
                         f"maps ({maps}) hold {anchors(height, width)} anchors, fewer than its {queries} queries; the "
                         f"smallest square input size is {smallest} (--size {smallest}), or build the model with "
                         "fewer queries (num_queries)")


def build_component(kind: str, spec: Mapping[str, Any], **injected: Any) -> nn.Module:
    """Build a registered component from its spec ``{"name": ..., **args}`` plus arguments the detector injects."""
    args = {k: v for k, v in spec.items() if k != "name"}
    return get_component(kind, spec["name"])(**args, **injected)


def part_builder(cls: type, kind: str, spec: Mapping[str, Any]) -> Any:
    """The class that builds part ``kind`` of a ``cls`` detector: the one ``cls.parts`` fixes (the spec's name must
    be its ``component_name``), else the registered component the spec names."""
    fixed = getattr(cls, "parts", {}).get(kind)
    if fixed is None:
        return get_component(kind, spec["name"])
    if spec.get("name", fixed.component_name) != fixed.component_name:
        raise ValueError(f"{cls.__name__} builds its {kind} from {fixed.__name__} ({kind} name "
                         f"{fixed.component_name!r}), not {spec['name']!r}; change its arguments instead: "
                         f"{kind}={{...}}")
    return fixed


def _component_kind(key: str) -> str | None:
    return key if key in COMPONENT_KINDS else None


def _accepted_args(builder: Any) -> set[str]:
    """Keyword arguments ``builder`` takes; a class whose ``__init__`` passes ``**kwargs`` on also takes its
    bases' (DEIMv2's decoder: D-FINE's ``num_queries``, ``num_points``, ...)."""
    params = inspect.signature(builder).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if isinstance(builder, type) and any(p.kind == p.VAR_KEYWORD for p in params):
        base = next((b for b in builder.__mro__[1:] if "__init__" in vars(b)), None)
        if base is not None and base is not nn.Module and base is not object:
            names |= _accepted_args(base)
    return names


def _component_spec(kind: str, default: Mapping[str, Any], value: Any) -> dict[str, Any]:
    """Merge a user override into a default component spec ``{"name": ..., **args}``."""
    if isinstance(value, str):
        if value in _components.get(kind, {}):
            return {"name": value}
        if kind == "backbone":  # any other string is a timm model name
            return {"name": "timm", "model_name": value}
        get_component(kind, value)  # raises with suggestions
    if isinstance(value, Mapping):
        value = dict(value)
        if "name" in value and value["name"] != default.get("name"):
            return value
        return {**default, **value}
    raise TypeError(f"{kind} must be a registered {kind} name or a dict of arguments, got {type(value).__name__}")


def resolve_model_args(
    architecture: str, cls: type, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Return the full argument dict for ``cls``: defaults updated with overrides routed to their component.

    A flat keyword (``num_queries=100``) goes to the one component whose builder accepts it; a component
    key (``decoder={...}``, ``backbone="resnet50d"``) replaces or updates that component's spec.
    """
    args = copy.deepcopy(dict(defaults))
    own = _accepted_args(cls) if overrides else set()
    for key, value in overrides.items():
        kind = _component_kind(key)
        if kind is not None and key in args:
            args[key] = _component_spec(kind, args[key], value)
        elif key in own:
            args[key] = value
        else:
            owners = [k for k, spec in args.items()
                      if _component_kind(k) and isinstance(spec, Mapping)
                      and key in _accepted_args(part_builder(cls, k, spec))]
            if len(owners) == 1:
                args[owners[0]] = {**args[owners[0]], key: value}
            elif len(owners) > 1:
                raise TypeError(
                    f"{architecture}: argument {key!r} is accepted by several components ({', '.join(owners)}); "
                    f"pass it as {owners[0]}={{{key!r}: ...}}"
                )
            else:
                valid = sorted(own | {a for k, spec in args.items() if _component_kind(k) and isinstance(spec, Mapping)
                                      for a in _accepted_args(part_builder(cls, k, spec))})
                raise TypeError(f"{architecture} got an unexpected argument {key!r}. Valid arguments: {', '.join(valid)}")
    check_model_args(args)
    return args


def build_detector(
    cls: type[Detector],
    architecture: str,
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any],
    pretrained_cfg: Mapping[str, Any],
) -> Detector:
    """Build ``cls`` from ``defaults`` + ``overrides`` and attach ``config`` and ``pretrained_cfg``."""
    args = resolve_model_args(architecture, cls, defaults, overrides)
    model = cls(**copy.deepcopy(args))
    # JSON round trip: the config must serialise, and tuples become lists as they will in config.json
    model.config = json.loads(json.dumps({"architecture": architecture, "model_args": args}))
    check_pretrained_cfg(pretrained_cfg, args.get("num_classes"), f"{architecture} pretrained_cfg")
    model.pretrained_cfg = dict(pretrained_cfg)
    return model


def boxes_to_pixels(boxes: torch.Tensor, target_sizes: torch.Tensor) -> torch.Tensor:
    """Normalised cxcywh ``[B, N, 4]`` -> xyxy in pixels of images of ``target_sizes`` ``[B, 2]`` (height, width)."""
    if not isinstance(target_sizes, torch.Tensor):  # (as_tensor of a tensor would be a constant when tracing)
        target_sizes = torch.as_tensor(target_sizes)
    from torchvision.ops import box_convert

    sizes = target_sizes.to(device=boxes.device, dtype=boxes.dtype)
    scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], -1)[:, None]
    return box_convert(boxes, "cxcywh", "xyxy") * scale


def sigmoid_topk(outputs: dict[str, torch.Tensor], top_k: int = 300
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Focal-style detection selection (RT-DETR, D-FINE): ``(boxes [B, K, 4] normalised cxcywh, scores [B, K],
    labels [B, K])``, the top ``K = min(top_k, Q * C)`` (query, class) pairs by sigmoid score, sorted."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    num_classes = logits.shape[-1]
    scores = logits.sigmoid().flatten(1)
    top_k = min(top_k, scores.shape[1])
    scores, index = topk_lowest_index(scores, top_k)  # ties in the same order as exported graphs
    labels = index % num_classes
    boxes = boxes.gather(1, (index // num_classes).unsqueeze(-1).expand(-1, -1, 4))
    return boxes, scores, labels


def detections_to_pixels(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, target_sizes: torch.Tensor,
               score_threshold: float) -> list[dict[str, torch.Tensor]]:
    """Normalised cxcywh -> xyxy in pixels of each original image, dropping scores below the threshold."""
    results = []
    for b, s, l in zip(boxes_to_pixels(boxes, target_sizes), scores, labels):
        keep = s >= score_threshold
        results.append({"boxes": b[keep], "scores": s[keep], "labels": l[keep]})
    return results


def check_pixel_values(x: Any, size_divisor: int) -> None:
    """Clear errors for inputs the model cannot take (wrong type, rank, channels, dtype or size)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor [B, 3, H, W], got {type(x).__name__}; "
                        "use model.predict(...) for images, paths or arrays")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"pixel_values must have shape [B, 3, H, W], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"pixel_values must be a float tensor (scaled as model.pretrained_cfg says), got {x.dtype}")
    h, w = x.shape[-2:]
    if h % size_divisor or w % size_divisor:
        raise ValueError(f"pixel_values height and width must be multiples of {size_divisor}, got {h}x{w}; "
                         "resize or pad the input (model.predict does this for you)")
