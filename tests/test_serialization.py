"""Serialization: state_dict round trips, and saved state dicts that load with weights_only=True."""
import pytest
import torch

from reliability_cases import LAYER_CASES, MODEL_CASES, calibrate_batchnorm, make_input

# Modules with a state (pooling has none).
STATEFUL_CASES = [case for case in LAYER_CASES if case.values[0]().state_dict()]


def _trained(factory, shape, seed: int) -> torch.nn.Module:
    """A module with seed-specific weights and BatchNorm statistics that differ from the defaults."""
    torch.manual_seed(seed)
    module = factory()
    if shape[0] > 1:  # BatchNorm needs two values per channel in training mode.
        module.train()
        with torch.no_grad():
            module(make_input(shape, seed=seed))
    return module.eval()


def _assert_same_state(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("factory, shape", STATEFUL_CASES)
def test_state_dict_round_trip(factory, shape):
    """Loading A's state dict into a differently seeded B makes B compute exactly what A does."""
    source, target = _trained(factory, shape, 0), _trained(factory, shape, 1)
    x = make_input(shape, seed=2)
    with torch.no_grad():
        expected = source(x)
        assert not torch.equal(target(x), expected)
        target.load_state_dict(source.state_dict())
        assert torch.equal(target(x), expected)
    _assert_same_state(target.state_dict(), source.state_dict())


@pytest.mark.parametrize("factory, shape", STATEFUL_CASES)
def test_saved_state_dict_loads_with_weights_only(factory, shape, tmp_path):
    """torch.save of a state dict needs no pickled code: torch.load(weights_only=True) restores it."""
    source = _trained(factory, shape, 0)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    _assert_same_state(loaded, source.state_dict())
    target = _trained(factory, shape, 1)
    target.load_state_dict(loaded)
    x = make_input(shape, seed=2)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@pytest.mark.parametrize("factory, shape", STATEFUL_CASES)
def test_meta_device_construction_then_assign(factory, shape):
    """Built on the meta device (no memory), a module takes real weights with assign=True."""
    source = _trained(factory, shape, 0)
    with torch.device("meta"):
        target = factory()
    assert all(t.is_meta for t in target.state_dict().values())
    target.load_state_dict(source.state_dict(), assign=True)
    target.eval()
    x = make_input(shape, seed=2)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("factory, shape", LAYER_CASES[:1] + LAYER_CASES[-1:])
def test_state_dict_keeps_dtype(factory, shape, dtype, tmp_path):
    source = _trained(factory, shape, 0).to(dtype)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    _assert_same_state(loaded, source.state_dict())
    assert loaded[next(iter(loaded))].dtype == dtype


@pytest.mark.slow
@pytest.mark.parametrize("factory, shape", [case for case in MODEL_CASES if case.id != "resnet18-separable"])
def test_model_save_then_weights_only_load_into_meta_model(factory, shape, tmp_path):
    """A whole model, with real BatchNorm statistics, through torch.save and a weights-only load."""
    torch.manual_seed(0)
    source = calibrate_batchnorm(factory(), shape)
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    other_seed = factory().eval()
    with torch.device("meta"):
        target = factory()
    target.load_state_dict(torch.load(path, weights_only=True), assign=True)
    target.eval()
    _assert_same_state(target.state_dict(), source.state_dict())
    x = make_input(shape, seed=2)
    with torch.no_grad():
        expected = source(x)
        assert torch.equal(target(x), expected)
        assert not torch.allclose(other_seed(x), expected)
