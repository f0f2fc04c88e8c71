"""zoo: real-time detection transformers (RT-DETR, DETR) by name, with trustworthy pretrained weights."""
from zoo.engine.draw import draw
from zoo.engine.evaluate import evaluate
from zoo.factory import create_model, create_model_from_config
from zoo.hub.publish import push_to_hub, save_pretrained
from zoo.registry import (
    get_component, is_model, list_components, list_models, model_entrypoint, register_component, register_model,
)

__version__ = "0.1.0"

__all__ = ["create_model", "create_model_from_config", "list_models", "is_model", "model_entrypoint",
           "register_model", "register_component", "get_component", "list_components", "__version__"]
__all__ += ["draw", "evaluate"]
__all__ += ["push_to_hub", "save_pretrained"]
