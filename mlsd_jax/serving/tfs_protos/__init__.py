"""TensorFlow Serving's published gRPC API (``tensorflow-serving-api``), without TensorFlow.

The message and service definitions are the published ones, byte for byte: ``descriptors.py``
holds the serialized ``FileDescriptorProto``s copied from the ``tensorflow-serving-api`` wheel
and the TensorFlow protos it imports (``generate.py`` rebuilds it; Apache-2.0, see ``NOTICE``).
They are loaded into a private descriptor pool, so the wire format, the full message names (and
so ``Any`` type URLs) and the RPC paths are TF Serving's while nothing here imports TensorFlow
(20 s and ~0.5 GB per server process) and nothing clashes with TensorFlow's own copies when
both are loaded. An unchanged TF Serving client (``tensorflow_serving.apis``) talks to a server
built on these classes.
"""
from __future__ import annotations

import functools

from google.protobuf import descriptor_pool, message_factory

from mlsd_jax.serving.tfs_protos.descriptors import FILES, TENSORFLOW_SERVING_API_VERSION

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


@functools.lru_cache(maxsize=1)
def pool() -> descriptor_pool.DescriptorPool:
    p = descriptor_pool.DescriptorPool()
    for _, serialized in FILES:
        p.AddSerializedFile(serialized)
    return p


@functools.lru_cache(maxsize=None)
def message(full_name: str):
    """The message class named ``full_name`` (``tensorflow.serving.PredictRequest``)."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))


def enum_value(enum: str, name: str) -> int:
    """``enum_value("tensorflow.DataType", "DT_FLOAT") == 1``."""
    return pool().FindEnumTypeByName(enum).values_by_name[name].number


__all__ = ["MODEL_SERVICE", "PREDICTION_SERVICE", "TENSORFLOW_SERVING_API_VERSION", "enum_value",
           "message", "pool"]
