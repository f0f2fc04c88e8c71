"""Validation of model configuration values, in one place: ``create_model`` keywords, ``--model-args``, a
config.json's ``model_args``, ``label_names`` and preprocessing, and training sizes. Each check raises a ValueError
(TypeError for a num_classes of the wrong type) naming the field, instead of a raw error from deep inside a layer
(or a model that silently finds nothing). A leaf module: the weights and the models both use it.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["check_num_classes", "check_model_args", "check_pretrained_cfg", "check_input_side", "MAX_INPUT_SIDE"]


def check_num_classes(num_classes: Any) -> int:
    """Validate ``num_classes``: a positive int (bools and floats are refused, not truncated)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be a positive int, got {num_classes!r} ({type(num_classes).__name__})")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


#: the largest input side zoo builds for (one 8192x8192 float image is 800 MB before the first layer)
MAX_INPUT_SIDE = 8192
#: the largest width or count an architecture argument may have (far above any real model)
_MAX_DIM = 65536
#: architecture arguments (in any component) that are counts or widths: an int in [minimum, _MAX_DIM]
_COUNTS = {**dict.fromkeys(("hidden_dim", "d_model", "dim_feedforward", "num_heads", "nhead", "num_queries",
                            "num_levels", "num_decoder_layers", "num_encoder_layers", "num_points"), 1),
           "num_denoising": 0}
#: architecture arguments that are finite floats in [low, high) (None: unbounded)
_RATES = {"dropout": (0.0, 1.0), "label_noise_ratio": (0.0, 1.0), "box_noise_scale": (0.0, None),
          "expansion": (1e-9, None), "depth_mult": (1e-9, None), "pe_temperature": (1e-9, None)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_model_args(args: Mapping[str, Any], prefix: str = "") -> None:
    """Validate the architecture arguments a model is built from (``create_model`` keywords, ``--model-args``,
    a config.json's ``model_args``), components included: counts and widths are ints within bounds, rates finite.
    A ValueError names the field (e.g. ``decoder.num_queries``) instead of a raw error from deep in a layer."""
    for key, value in args.items():
        field = f"{prefix}{key}"
        if isinstance(value, Mapping):
            check_model_args(value, f"{field}.")
        elif key in _COUNTS:
            least = _COUNTS[key]
            values = value if key == "num_points" and isinstance(value, (list, tuple)) else [value]
            if not values or not all(_is_int(v) and least <= v <= _MAX_DIM for v in values):
                raise ValueError(f"{field} must be an integer from {least} to {_MAX_DIM}"
                                 + (" (or a list of them)" if key == "num_points" else "") + f", got {value!r}")
        elif key in _RATES:
            low, high = _RATES[key]
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
                  and value != float("inf") and value >= low and (high is None or value < high))
            if not ok:
                span = f"[{low:g}, {high:g})" if high is not None else f">= {low:g}" if low else "> 0"
                raise ValueError(f"{field} must be a finite number {span}, got {value!r}")
        elif key == "num_classes":
            check_num_classes(value)


def check_input_side(value: Any, field: str = "input size") -> int:
    """An image side zoo can build for: an int from 1 to :data:`MAX_INPUT_SIDE` (a ValueError naming ``field``)."""
    if not _is_int(value) or not 1 <= value <= MAX_INPUT_SIDE:
        raise ValueError(f"{field} must be an integer from 1 to {MAX_INPUT_SIDE} pixels, got {value!r}")
    return value


def check_pretrained_cfg(cfg: Mapping[str, Any], num_classes: int | None = None, source: str = "pretrained_cfg"
                         ) -> None:
    """Validate preprocessing values (from a config.json, the manifest, or code): ``input_size`` ``[3, H, W]`` with
    sane sides, finite ``mean`` / ``std`` of 3 values (std > 0), ``label_names`` a list of ``num_classes`` strings.
    A ValueError names the field and ``source``."""
    size = cfg.get("input_size")
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 3 or size[0] != 3:
            raise ValueError(f"{source}: input_size must be [3, height, width], got {size!r}")
        for side in size[1:]:
            check_input_side(side, f"{source}: input_size")
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is None:
            continue
        ok = (isinstance(value, (list, tuple)) and len(value) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf") for v in value)
              and (key == "mean" or all(v > 0 for v in value)))
        if not ok:
            what = "3 finite numbers" + (" > 0" if key == "std" else "")
            raise ValueError(f"{source}: {key} must be {what} (or null), got {value!r}")
    labels = cfg.get("label_names")
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not all(
                isinstance(name, str) for name in labels):
            raise ValueError(f"{source}: label_names must be a list of strings (or null), got {labels!r}")
        if num_classes is not None and len(labels) != num_classes:
            raise ValueError(f"{source}: {len(labels)} label_names for num_classes={num_classes}")
