"""zoo: real-time detection transformers (RT-DETR, DETR) by name, with trustworthy pretrained weights.

Importing zoo imports every model family (``zoo.models``), as timm does, so that the registry is complete.
"""
import zoo.models  # noqa: F401  (registers every model and component)
from zoo.engine.draw import draw
from zoo.engine.evaluate import evaluate
from zoo import export  # a module that is also callable: zoo.export(model, "model.onnx")
from zoo.factory import create_model, create_model_from_config
from zoo.registry import (
    get_component, is_model, list_components, list_models, model_entrypoint, register_component, register_model,
)
from zoo.version import __version__
from zoo.weights.publish import push_to_hub, save_pretrained

__all__ = ["create_model", "create_model_from_config", "list_models", "is_model", "model_entrypoint",
           "register_model", "register_component", "get_component", "list_components", "__version__",
           "draw", "evaluate", "push_to_hub", "save_pretrained"]
__all__ += ["export"]
