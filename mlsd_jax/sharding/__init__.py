"""Mesh, logical-axis rules and shardings."""
from mlsd_jax.sharding.mesh import (DEFAULT_RULES, MeshConfig, batch_sharding, data_parallel_size,
                                    logical_to_sharding, logical_to_spec, make_mesh, replicated,
                                    resolve_mesh_shape, shard_batch, tree_shardings,
                                    validate_rules)

__all__ = ["DEFAULT_RULES", "MeshConfig", "batch_sharding", "data_parallel_size",
           "logical_to_sharding", "logical_to_spec", "make_mesh", "replicated",
           "resolve_mesh_shape", "shard_batch", "tree_shardings", "validate_rules"]
