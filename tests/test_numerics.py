"""Numerical reliability: float64 gradcheck, channels_last, bf16 autocast, determinism, seeding."""
import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from reliability_cases import (
    LAYER_CASES,
    MODEL_CASES,
    SPATIAL_CASES,
    calibrate_batchnorm,
    has_batchnorm,
    make_input,
)

# channels_last runs other kernels (another summation order): float32 rounding only (measured on
# the layer cases: at most 4.8e-7 absolute).
CHANNELS_LAST_TOL = dict(rtol=1e-5, atol=1e-5)
# bf16 keeps 8 significant bits (relative step 2**-8 = 0.4 %). Bound on the error as a fraction of
# the output's largest magnitude (measured on the layer cases: at most 0.46 %).
BF16_REL_TOL = 0.02

# Convolutions and Dense draw their weights at random; BatchNorm starts from constants (1, 0).
RANDOM_INIT_CASES = [
    c for c in LAYER_CASES if any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in c.values[0]().modules())
]
# The gradcheck above runs these in training mode; the test below shows that mode is really used.
BATCHNORM_CASES = [c for c in LAYER_CASES if has_batchnorm(c.values[0]())]


def _train_mode(module: torch.nn.Module) -> torch.nn.Module:
    """Training mode, so BatchNorm normalises with batch statistics (the harder gradient)."""
    return module.train()


def _loss(out: torch.Tensor) -> torch.Tensor:
    """A fixed random weighting of the output: unlike sum(out**2), not constant after a BatchNorm."""
    return (out * make_input(out.shape, seed=2)).sum()


@pytest.mark.parametrize("factory, shape", LAYER_CASES)
def test_gradcheck_float64(factory, shape):
    """Analytic gradients w.r.t. the input AND every parameter match finite differences."""
    module = _train_mode(factory().double())
    names = [name for name, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())
    buffers = dict(module.named_buffers())
    x = make_input(shape, torch.float64).requires_grad_()

    def call(inp, *weights):
        return functional_call(module, {**dict(zip(names, weights)), **buffers}, (inp,))

    # fast_mode compares random projections u^T J v of the Jacobian instead of every entry: any wrong
    # entry still shows up, at a fraction of the cost.
    assert gradcheck(call, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("factory, shape", SPATIAL_CASES)
def test_channels_last_matches_contiguous(factory, shape):
    """A channels_last model on a channels_last input gives the contiguous outputs and gradients."""
    module = _train_mode(factory())
    module_cl = copy.deepcopy(module).to(memory_format=torch.channels_last)
    x = make_input(shape).requires_grad_()
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and not x_cl.is_contiguous()

    out, out_cl = module(x), module_cl(x_cl)
    torch.testing.assert_close(out_cl, out, **CHANNELS_LAST_TOL)
    _loss(out).backward()
    _loss(out_cl).backward()
    torch.testing.assert_close(x_cl.grad, x.grad, **CHANNELS_LAST_TOL)
    for (name, p), p_cl in zip(module.named_parameters(), module_cl.parameters()):
        torch.testing.assert_close(p_cl.grad, p.grad, **CHANNELS_LAST_TOL, msg=name)


@pytest.mark.parametrize("factory, shape", LAYER_CASES)
def test_bf16_autocast_close_to_float32(factory, shape):
    """CPU bf16 autocast: finite outputs within BF16_REL_TOL (of the largest |output|) of float32."""
    module = factory().eval()
    x = make_input(shape)
    with torch.no_grad():
        reference = module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = module(x)
    assert low.shape == reference.shape
    assert torch.isfinite(low).all()
    error = (low.float() - reference).abs().max().item()
    assert error <= BF16_REL_TOL * reference.abs().max().item()


def test_bf16_autocast_runs_in_bf16():
    """The tolerance above is meaningful only if autocast really lowers the convolution."""
    conv = LAYER_CASES[0].values[0]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(make_input((1, 2, 6, 6))).dtype == torch.bfloat16


@contextlib.contextmanager
def deterministic_algorithms():
    """Turn on torch.use_deterministic_algorithms and restore the previous setting afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.parametrize("factory, shape", LAYER_CASES)
def test_deterministic_algorithms_bitwise_repeatable(factory, shape):
    """Forward and backward run under deterministic algorithms and repeat bit for bit."""
    initial = _train_mode(factory())
    results = []
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
        for _ in range(2):
            module = copy.deepcopy(initial)
            x = make_input(shape).requires_grad_()
            out = module(x)
            _loss(out).backward()
            results.append([out.detach(), x.grad] + [p.grad for p in module.parameters()])
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_deterministic_setting_restored():
    """The context manager puts back whatever setting it found, warn_only included."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with deterministic_algorithms():
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    with deterministic_algorithms():
        pass
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("factory, shape", RANDOM_INIT_CASES)
def test_same_seed_same_initialisation(factory, shape):
    """torch.manual_seed fixes every parameter and buffer; another seed changes the parameters."""
    states = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        states.append(factory().state_dict())
    same, other = states[1], states[2]
    assert states[0].keys() == same.keys()
    for key, value in states[0].items():
        assert torch.equal(value, same[key]), key
    assert any(not torch.equal(states[0][key], other[key]) for key in states[0])


@pytest.mark.parametrize("factory, shape", BATCHNORM_CASES)
def test_batchnorm_training_mode_ignores_running_stats(factory, shape):
    """BN in training mode normalises with batch statistics: outputs ignore the running buffers."""
    module = _train_mode(factory().double())
    x = make_input(shape, torch.float64)
    out = module(x)
    for buffer_name, buffer in module.named_buffers():
        if buffer_name.endswith(("running_mean", "running_var")):
            buffer.add_(3.0)
    torch.testing.assert_close(module(x), out, rtol=0, atol=0)


# Whole models (eval mode, BatchNorm statistics from a real batch so outputs depend on the input).
# channels_last: float32 outputs within 1e-4 of the largest |output| (measured: at most 6.4e-6).
MODEL_CHANNELS_LAST_REL_TOL = 1e-4
# bf16 through 18-40 layers: within 15 % of the largest |output| (measured: at most 7.1 %, for the
# separable ResNet-18; 5.8 % ResNet-18, 3.1 % Xception, 0.3 % SeparableConvNet).
MODEL_BF16_REL_TOL = 0.15


@pytest.fixture(scope="module", params=[pytest.param(case.values, id=case.id) for case in MODEL_CASES])
def calibrated_model(request):
    factory, shape = request.param
    torch.manual_seed(0)
    return calibrate_batchnorm(factory(), shape), shape


@pytest.mark.slow
def test_model_channels_last_matches_contiguous(calibrated_model):
    model, shape = calibrated_model
    x = make_input(shape)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    scale = out.abs().max().item()
    torch.testing.assert_close(out_cl, out, rtol=0, atol=MODEL_CHANNELS_LAST_REL_TOL * scale)


@pytest.mark.slow
def test_model_bf16_autocast_close_to_float32(calibrated_model):
    model, shape = calibrated_model
    x = make_input(shape)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    error = (low.float() - reference).abs().max().item()
    assert error <= MODEL_BF16_REL_TOL * reference.abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("factory, shape", MODEL_CASES)
def test_model_same_seed_same_initialisation(factory, shape):
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        states.append(factory().state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    changed = [key for key in states[0] if not torch.equal(states[0][key], states[2][key])]
    assert any(key.endswith("weight") for key in changed)


@pytest.mark.slow
def test_model_deterministic_algorithms_bitwise_repeatable(calibrated_model):
    model, shape = calibrated_model
    results = []
    with deterministic_algorithms():
        for _ in range(2):
            replica = copy.deepcopy(model).train()
            x = make_input(shape)
            _loss(replica(x)).backward()
            results.append([p.grad for p in replica.parameters()])
    for first, second in zip(*results):
        assert torch.equal(first, second)
