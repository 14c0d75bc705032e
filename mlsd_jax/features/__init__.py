"""Feature transforms fitted on the training split and shared by training, serving and export."""
from mlsd_jax.features.numeric import (StreamingMoments, fit_log1p_standardize,
                                       log1p_standardize, signed_log1p)

__all__ = ["StreamingMoments", "fit_log1p_standardize", "log1p_standardize", "signed_log1p"]
from mlsd_jax.features.spec import (Categorical, Cross, FeatureSpec, FittedFeatureSpec,
                                    MultiCategorical, Numeric, Sequence, Text)

__all__ += ["Categorical", "Cross", "FeatureSpec", "FittedFeatureSpec", "MultiCategorical",
            "Numeric", "Sequence", "Text"]
