"""The model server: TF Serving REST/gRPC and KServe V2 over exported model bundles.

See :mod:`mlsd_jax.serving.server` for the command line, the Python entry points and the
endpoints.
"""
from mlsd_jax.serving.config import (BatchingConfig, CacheConfig, FallbackConfig, LogConfig,
                                     ModelConfig, ServeConfig, serve_config)
from mlsd_jax.serving.server import RunningServer, build_app, build_state, serve, start_server
from mlsd_jax.serving.store import set_labels

SERVER_NAME = "mlsd_jax"
SERVER_VERSION = "0.1.0"

__all__ = ["BatchingConfig", "CacheConfig", "FallbackConfig", "LogConfig", "ModelConfig",
           "RunningServer", "SERVER_NAME", "SERVER_VERSION", "ServeConfig", "build_app",
           "build_state", "serve", "serve_config", "set_labels", "start_server"]
