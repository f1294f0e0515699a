"""torch.distributed on CPU: DistributedDataParallel over gloo, and SyncBatchNorm conversion.

Two spawned processes each take half of a batch; after DDP's all-reduce their gradients (and the
parameters after one SGD step) must equal a single process's on the whole batch. torch's
SyncBatchNorm runs only on GPUs, so on CPU the BN models train with BN frozen (eval mode, the usual
fine-tuning set-up) and the conversion is checked by structure, state dict and eval outputs.
"""
import copy
import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

import torchblocks as tb
from reliability_cases import LAYER_CASES, MODEL_CASES, calibrate_batchnorm, has_batchnorm, make_input
from torchblocks import models

WORLD_SIZE = 2
BATCH = 4  # two samples per process
GRAD_TOL = dict(rtol=1e-5, atol=1e-5)
# The spawned group must finish well inside the per-test timeout below.
JOIN_DEADLINE_S = 45

# name -> (model factory, input shape of the whole batch, freeze BatchNorm)
DDP_CASES = {
    "separableconvnet": (lambda: models.SeparableConvNet(3, 10), (BATCH, 3, 32, 32), False),
    "resnet18-frozen-bn": (lambda: models.resnet18(num_classes=10), (BATCH, 3, 32, 32), True),
}


def _setup(name: str):
    """Identical model, batch and labels in every process: seeded, BN statistics from a real batch."""
    factory, shape, freeze_bn = DDP_CASES[name]
    torch.manual_seed(0)
    model = factory()
    if freeze_bn:
        calibrate_batchnorm(model, shape).train()
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
    x = make_input(shape, seed=11)
    labels = torch.arange(shape[0]) % 10
    return model, x, labels


def _step(model: nn.Module, trained: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """One SGD step of ``model`` (maybe DDP-wrapped around ``trained``): gradients and new weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), labels).backward()
    grads = {name: p.grad.clone() for name, p in trained.named_parameters()}
    optimizer.step()
    return {"grads": grads, "params": {name: p.detach().clone() for name, p in trained.named_parameters()}}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """Spawned process ``rank``: join the gloo group, train each case on its half of the batch."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=30)
    )
    try:
        results = {}
        for name in DDP_CASES:
            model, x, labels = _setup(name)
            half = x.shape[0] // WORLD_SIZE
            part = slice(rank * half, (rank + 1) * half)
            results[name] = _step(DistributedDataParallel(model), model, x[part], labels[part])
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Run both DDP cases in one spawned 2-process group; kill it if it outlives the deadline."""
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _ddp_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOIN_DEADLINE_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {JOIN_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(DDP_CASES))
def test_ddp_two_halves_equal_one_whole_batch(ddp_results, name):
    """Gradients and stepped weights of 2-process DDP equal one process on the whole batch (1e-5)."""
    model, x, labels = _setup(name)
    reference = _step(model, model, x, labels)
    for rank, results in enumerate(ddp_results):
        result = results[name]
        assert result["grads"].keys() == reference["grads"].keys()
        for key, grad in reference["grads"].items():
            torch.testing.assert_close(result["grads"][key], grad, **GRAD_TOL, msg=f"rank {rank}: {key}")
        for key, param in reference["params"].items():
            torch.testing.assert_close(result["params"][key], param, **GRAD_TOL, msg=f"rank {rank}: {key}")
    # Each rank saw only half the batch: without the all-reduce its gradient would differ.
    half_model, half_x, half_labels = _setup(name)
    half = _step(half_model, half_model, half_x[: BATCH // 2], half_labels[: BATCH // 2])
    assert any(
        not torch.allclose(half["grads"][key], grad, **GRAD_TOL) for key, grad in reference["grads"].items()
    )


def _mixed_axis_model() -> nn.Module:
    """BatchNorm on both axes, wrapped and inside blocks, to check every kind gets converted."""
    return nn.Sequential(
        tb.ConvBN(3, 4, 3, padding="same"),
        tb.Residual(tb.Conv2d(4, 6, 3, 2, "same"), tb.Projection(4, 6, 2, norm=True)),
        tb.BatchNorm(6),
        ChannelsLastBatchNorm(6),
    )


class ChannelsLastBatchNorm(nn.Module):
    """(N, C, H, W) -> permute -> BatchNorm(axis=-1) -> permute back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = tb.BatchNorm(channels, axis=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# Every layer and model with a BatchNorm (SeparableConvNet has none).
SYNC_BN_CASES = (
    [case for case in LAYER_CASES if has_batchnorm(case.values[0]())]
    + [pytest.param(_mixed_axis_model, (3, 3, 6, 6), id="mixed-axes")]
    + [
        pytest.param(*case.values, id=case.id, marks=pytest.mark.slow)
        for case in MODEL_CASES
        if case.id != "separableconvnet"
    ]
)


@pytest.mark.parametrize("factory, shape", SYNC_BN_CASES)
def test_convert_sync_batchnorm_converts_every_batchnorm(factory, shape):
    """Every BatchNorm becomes a SyncBatchNorm; axes, state dict and eval outputs are kept."""
    torch.manual_seed(0)
    original = calibrate_batchnorm(factory(), shape)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(original))

    norms = [name for name, m in original.named_modules() if isinstance(m, _BatchNorm)]
    synced = [name for name, m in converted.named_modules() if isinstance(m, nn.SyncBatchNorm)]
    assert norms and synced == norms
    assert not any(
        isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm) for m in converted.modules()
    )
    axes = {name: m.axis for name, m in original.named_modules() if isinstance(m, tb.BatchNorm)}
    assert {name: m.axis for name, m in converted.named_modules() if isinstance(m, tb.BatchNorm)} == axes

    # A fresh conversion loads the original (unconverted) weights and statistics, strictly.
    fresh = nn.SyncBatchNorm.convert_sync_batchnorm(factory())
    fresh.load_state_dict(original.state_dict())
    assert list(fresh.state_dict()) == list(original.state_dict())
    fresh.eval()
    # SyncBatchNorm syncs only in training mode with a process group: eval runs on CPU, exactly.
    x = make_input(shape, seed=2)
    with torch.no_grad():
        assert torch.equal(fresh(x), original(x))


def test_convert_sync_batchnorm_keeps_channels_last_axis():
    """BatchNorm(axis=-1) still normalises the last dim after conversion (the wrapper keeps axis)."""
    torch.manual_seed(0)
    original = calibrate_batchnorm(tb.BatchNorm(3, axis=-1), (4, 5, 5, 3))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(original))
    assert isinstance(converted.bn, nn.SyncBatchNorm) and converted.axis == -1
    x = make_input((2, 5, 5, 3), seed=2)
    with torch.no_grad():
        expected = (x - original.bn.running_mean) / torch.sqrt(original.bn.running_var + original.bn.eps)
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-6)
