"""Export: TensorFlow SavedModels with the feature transform baked in."""
from mlsd_jax.export.saved_model import (compare_with_jax, export_saved_model, load_saved_model,
                                         next_version)

__all__ = ["compare_with_jax", "export_saved_model", "load_saved_model", "next_version"]
