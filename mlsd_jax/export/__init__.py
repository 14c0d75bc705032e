"""Export: TensorFlow SavedModels with the feature path baked in, and the model bundle."""
from mlsd_jax.export.bundle import Bundle, load_bundle
from mlsd_jax.export.saved_model import (check_export, export_model, load_saved_model,
                                         next_version, saved_model_predict)

__all__ = ["Bundle", "check_export", "export_model", "load_bundle", "load_saved_model",
           "next_version", "saved_model_predict"]
