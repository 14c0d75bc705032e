import jax
import pytest

from mlsd_jax import sharding as shd


def test_eight_simulated_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape,expect", [([-1, 1], (8, 1)), ([4, -1], (4, 2)), ([2, 4], (2, 4))])
def test_mesh_fill(shape, expect):
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": shape})
    assert tuple(mesh.shape.values()) == expect


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        shd.make_mesh({"axes": ["data", "model"], "shape": [3, 2]})
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        shd.make_mesh({"axes": ["data", "model"], "shape": [-1, -1]})
    with pytest.raises(ValueError, match="unknown mesh config keys"):
        shd.make_mesh({"axes": ["data"], "shapes": [8]})


def test_rules_raise_on_unknown_and_conflicts():
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [4, 2]})
    rules = shd.validate_rules(shd.DEFAULT_RULES, mesh)
    assert shd.logical_to_spec(("batch", "length", None), rules) == jax.sharding.PartitionSpec(
        "data", None, None)
    with pytest.raises(KeyError, match="no sharding rule"):
        shd.logical_to_spec(("batch", "nonsense"), rules)
    with pytest.raises(ValueError, match="conflicting sharding rules"):
        shd.validate_rules([("batch", "data"), ("batch", "model")], mesh)
    with pytest.raises(ValueError, match="mesh has axes"):
        shd.validate_rules([("batch", "pipeline")], mesh)
    with pytest.raises(ValueError, match="two dimensions"):
        shd.logical_to_spec(("mlp", "heads"), rules)
