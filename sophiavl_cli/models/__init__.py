"""Model references, the built-in tiny models, the processor wrapper and model loading."""

from sophiavl_cli.models.loading import load_vl_model, model_family
from sophiavl_cli.models.processing import EncodedPrompt, VLProcessor, smart_resize
from sophiavl_cli.models.resolve import resolve_model

__all__ = ["EncodedPrompt", "VLProcessor", "load_vl_model", "model_family", "resolve_model", "smart_resize"]
