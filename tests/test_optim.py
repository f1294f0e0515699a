"""torchblocks.optim against Keras 3's optimizers (torch backend), step by step.

The same initial variables and the same gradient sequence go through the Keras optimizer and ours;
after every step the variables must agree to TOL. Gradients span 1e-5 .. 1 in magnitude so that
where epsilon sits (inside or outside the square root, bias-corrected or not) shows: torch.optim's
own RMSprop and Adam, given the same numbers, must miss Keras by far more than TOL.
"""
import io

import numpy as np
import pytest
import torch

import torchblocks as tb
from keras_oracle import keras

SHAPES = [(3, 4), (5,)]
STEPS = 6
# Keras runs the same float32 operations in the same order (measured error: 0); TOL allows for
# another CPU's vector kernels rounding differently.
TOL = dict(rtol=1e-6, atol=1e-8)
# torch.optim with the same hyperparameters must miss by at least this factor times TOL's rtol.
SENSITIVITY = 100

RMSPROP_OPTIONS = [
    dict(),
    dict(momentum=0.9),
    dict(centered=True),
    dict(centered=True, momentum=0.5, rho=0.8),
    dict(lr=0.01, rho=0.5, epsilon=1e-4),
]
ADAM_OPTIONS = [
    dict(),
    dict(amsgrad=True),
    dict(lr=0.01, beta_1=0.5, beta_2=0.9),
    dict(amsgrad=True, epsilon=1e-4, beta_2=0.99),
]
# (Keras argument name, torch.optim argument name) where they differ.
KERAS_NAMES = {"lr": "learning_rate"}


def _problem(seed: int):
    """Initial variables and a gradient sequence with magnitudes from 1e-5 to 1 (None = no gradient)."""
    rng = np.random.default_rng(seed)
    initial = [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]
    grads = []
    for step in range(STEPS):
        row = []
        for shape in SHAPES:
            scale = 10.0 ** rng.uniform(-5, 0, size=shape)
            row.append((rng.normal(size=shape) * scale).astype(np.float32))
        grads.append(row)
    grads[2][1] = None  # the second variable skips a step: Keras' step count still advances
    return initial, grads


def _run_keras(keras_class: str, options: dict, seed: int):
    initial, grads = _problem(seed)
    k = keras()
    variables = [k.Variable(value) for value in initial]
    optimizer = getattr(k.optimizers, keras_class)(**{KERAS_NAMES.get(n, n): v for n, v in options.items()})
    history = []
    for row in grads:
        pairs = [(k.ops.convert_to_tensor(g), v) for g, v in zip(row, variables) if g is not None]
        optimizer.apply_gradients(pairs)
        history.append([np.array(k.ops.convert_to_numpy(v)) for v in variables])
    return history


def _run_torch(make_optimizer, seed: int):
    initial, grads = _problem(seed)
    params = [torch.nn.Parameter(torch.from_numpy(value.copy())) for value in initial]
    optimizer = make_optimizer(params)
    history = []
    for row in grads:
        for p, g in zip(params, row):
            p.grad = None if g is None else torch.from_numpy(g)
        optimizer.step()
        history.append([p.detach().numpy().copy() for p in params])
    return history


def _max_rel_error(history, reference) -> float:
    worst = 0.0
    for step, (row, expected_row) in enumerate(zip(history, reference)):
        for got, expected in zip(row, expected_row):
            worst = max(worst, float(np.max(np.abs(got - expected) / (np.abs(expected) + TOL["atol"]))))
    return worst


def _assert_close_every_step(history, reference) -> None:
    for step, (row, expected_row) in enumerate(zip(history, reference)):
        for index, (got, expected) in enumerate(zip(row, expected_row)):
            np.testing.assert_allclose(got, expected, **TOL, err_msg=f"step {step + 1}, variable {index}")


@pytest.mark.parametrize("options", RMSPROP_OPTIONS, ids=str)
def test_rmsprop_matches_keras_step_by_step(options):
    reference = _run_keras("RMSprop", options, seed=1)
    _assert_close_every_step(_run_torch(lambda p: tb.optim.RMSprop(p, **options), seed=1), reference)
    # torch's RMSprop (epsilon outside the root) with the same numbers misses by far more.
    torch_options = dict(lr=options.get("lr", 1e-3), alpha=options.get("rho", 0.9),
                         eps=options.get("epsilon", 1e-7), momentum=options.get("momentum", 0.0),
                         centered=options.get("centered", False))
    theirs = _run_torch(lambda p: torch.optim.RMSprop(p, **torch_options), seed=1)
    assert _max_rel_error(theirs, reference) > SENSITIVITY * TOL["rtol"]


@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=str)
def test_adam_matches_keras_step_by_step(options):
    reference = _run_keras("Adam", options, seed=2)
    _assert_close_every_step(_run_torch(lambda p: tb.optim.Adam(p, **options), seed=2), reference)
    torch_options = dict(lr=options.get("lr", 1e-3), betas=(options.get("beta_1", 0.9), options.get("beta_2", 0.999)),
                         eps=options.get("epsilon", 1e-7), amsgrad=options.get("amsgrad", False))
    theirs = _run_torch(lambda p: torch.optim.Adam(p, **torch_options), seed=2)
    assert _max_rel_error(theirs, reference) > SENSITIVITY * TOL["rtol"]


OPTIMIZERS = [
    pytest.param(lambda p: tb.optim.RMSprop(p, momentum=0.9, centered=True), id="rmsprop"),
    pytest.param(lambda p: tb.optim.Adam(p, amsgrad=True), id="adam"),
]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_state_dict_round_trip_continues_exactly(make_optimizer):
    """Three steps, save, load into a fresh optimizer, three more: equal to six uninterrupted steps."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 3) * 10.0 ** -k for k in range(6)]
    start = torch.randn(4, 3)

    def run(split: bool) -> torch.Tensor:
        p = torch.nn.Parameter(start.clone())
        optimizer = make_optimizer([p])
        for index, g in enumerate(grads):
            if split and index == 3:
                saved = torch.load(_save(optimizer.state_dict()), weights_only=True)
                optimizer = make_optimizer([p])
                optimizer.load_state_dict(saved)
            p.grad = g.clone()
            optimizer.step()
        return p.detach().clone()

    assert torch.equal(run(split=True), run(split=False))


def _save(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_param_group_added_later_joins_the_step_count():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = tb.optim.Adam([a])
    a.grad = torch.ones(2)
    optimizer.step()
    optimizer.add_param_group({"params": [b]})
    assert [group["iterations"] for group in optimizer.param_groups] == [1, 1]


RMSPROP, ADAM = tb.optim.RMSprop, tb.optim.Adam
BAD_ARGUMENTS = [
    (RMSPROP, dict(lr=-0.1), ValueError,
     r"Invalid value for argument `lr`\. Expected a non-negative finite float\. Received lr=-0\.1\."),
    (RMSPROP, dict(rho=1.0), ValueError,
     r"Invalid value for argument `rho`\. Expected a float in \[0, 1\)\. Received rho=1\.0\."),
    (RMSPROP, dict(momentum=-0.5), ValueError, r"argument `momentum`.*Received momentum=-0\.5\."),
    (RMSPROP, dict(epsilon=0.0), ValueError,
     r"argument `epsilon`\. Expected a strictly positive finite float\. Received epsilon=0\.0\."),
    (RMSPROP, dict(epsilon=float("nan")), ValueError, r"argument `epsilon`.*Received epsilon=nan\."),
    (RMSPROP, dict(centered="yes"), TypeError,
     r"Invalid type for argument `centered`\. Expected a bool\. Received centered='yes' of type str\."),
    (ADAM, dict(beta_1=1.5), ValueError,
     r"Invalid value for argument `beta_1`\. Expected a float in \[0, 1\)\. Received beta_1=1\.5\."),
    (ADAM, dict(beta_2=-0.1), ValueError, r"argument `beta_2`.*Received beta_2=-0\.1\."),
    (ADAM, dict(lr=float("inf")), ValueError, r"argument `lr`.*Received lr=inf\."),
    (ADAM, dict(lr="0.1"), TypeError,
     r"Invalid type for argument `lr`\. Expected a float\. Received lr='0\.1' of type str\."),
    (ADAM, dict(amsgrad=1), TypeError, r"argument `amsgrad`\. Expected a bool\."),
]


@pytest.mark.parametrize("cls, kwargs, error, message", BAD_ARGUMENTS, ids=[str(row[1]) for row in BAD_ARGUMENTS])
def test_bad_hyperparameters_are_refused(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls([torch.nn.Parameter(torch.ones(1))], **kwargs)


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_sparse_gradients_are_refused(make_optimizer):
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    optimizer = make_optimizer(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(NotImplementedError, match=r"does not support sparse gradients.*shape \(5, 2\)"):
        optimizer.step()
