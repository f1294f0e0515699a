"""torch.distributed on CPU: DistributedDataParallel over gloo, and synchronized BatchNorm.

Two spawned processes each take half of a batch; after DDP's all-reduce their gradients (and the
parameters after one SGD step) must equal a single process's on the whole batch. torch's
``nn.SyncBatchNorm`` runs only on GPUs: its conversion is checked by structure, state dict and eval
outputs, and the DDP models train with BN frozen. ``tb.SyncBatchNorm`` (from
``tb.convert_sync_batchnorm``) synchronises over gloo: two processes on parts of a batch in training
mode must give the outputs, input gradients, parameter gradients and running statistics of one
process on the whole batch.
"""
import contextlib
import copy
import datetime
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

import numpy as np
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


@contextlib.contextmanager
def _gloo_group(rank: int, port: int) -> Iterator[None]:
    """In a spawned worker: join the WORLD_SIZE gloo group on localhost as ``rank``, one thread,
    and leave it on the way out."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=30))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """Spawned process ``rank``: join the gloo group, train each case on its half of the batch."""
    with _gloo_group(rank, port):
        results = {}
        for name in DDP_CASES:
            model, x, labels = _setup(name)
            half = x.shape[0] // WORLD_SIZE
            part = slice(rank * half, (rank + 1) * half)
            results[name] = _step(DistributedDataParallel(model), model, x[part], labels[part])
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _spawn(worker, out_dir) -> None:
    """Run ``worker(rank, port, out_dir)`` in WORLD_SIZE spawned processes; kill them past the deadline."""
    context = mp.start_processes(
        worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOIN_DEADLINE_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {JOIN_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Run both DDP cases in one spawned 2-process group; kill it if it outlives the deadline."""
    out_dir = tmp_path_factory.mktemp("ddp")
    _spawn(_ddp_worker, out_dir)
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


# -- tb.SyncBatchNorm over gloo ----------------------------------------------------------------

SYNC_BATCH = 8
SYNC_TOL = dict(rtol=1e-5, atol=1e-5)
# How the batch is shared out between the two ranks.
SPLITS = {"equal": (4, 4), "unequal": (3, 5)}
# name -> (factory, whole-batch input shape): tb.BatchNorm on both axes, torch BatchNorm2d,
# BatchNorm after Dense on (N, C), and a tb.SyncBatchNorm(axis=-1) built directly.
SYNC_CASES = {
    "mixed-axes": (_mixed_axis_model, (SYNC_BATCH, 3, 6, 6)),
    "torch-bn2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), (SYNC_BATCH, 3, 5, 5)),
    "dense-bn": (lambda: tb.DenseBN(6, 5), (SYNC_BATCH, 6)),
    "sync-axis-last-cumulative": (lambda: tb.SyncBatchNorm(5, axis=-1, momentum=None), (SYNC_BATCH, 4, 5)),
}


def _loss_weights(shape) -> torch.Tensor:
    """Fixed random weights: loss = sum(out * weights) splits exactly into the ranks' losses."""
    return make_input(shape, seed=9)


def _sync_bn_step(model: nn.Module, x: torch.Tensor, rows: slice):
    """Forward ``x[rows]`` in training mode, backward sum(out * weights[rows]); what to compare."""
    x = x[rows].clone().requires_grad_(True)
    out = model(x)
    whole = (SYNC_BATCH,) + tuple(out.shape[1:])
    (out * _loss_weights(whole)[rows]).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return {"out": out.detach(), "input_grad": x.grad, "grads": grads, "buffers": buffers}


def _sync_bn_worker(rank: int, port: int, out_dir: str) -> None:
    with _gloo_group(rank, port):
        results = {}
        for name in SYNC_CASES:
            for split, sizes in SPLITS.items():
                torch.manual_seed(0)
                factory, shape = SYNC_CASES[name]
                model = tb.convert_sync_batchnorm(factory().train())
                x = make_input(shape, seed=5) * 2.0 + 0.5
                start = sum(sizes[:rank])
                result = _sync_bn_step(model, x, slice(start, start + sizes[rank]))
                # Parameter gradients: each rank holds its part's share; their sum is the whole.
                for grad in result["grads"].values():
                    dist.all_reduce(grad)
                results[f"{name}/{split}"] = result
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def sync_bn_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("syncbn")
    _spawn(_sync_bn_worker, out_dir)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def _whole_batch_reference(name: str):
    torch.manual_seed(0)
    factory, shape = SYNC_CASES[name]
    model = factory().train()
    x = make_input(shape, seed=5) * 2.0 + 0.5
    return model, x, _sync_bn_step(model, x, slice(0, SYNC_BATCH))


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("name", list(SYNC_CASES))
def test_sync_batchnorm_two_processes_equal_one_whole_batch(sync_bn_results, name, split):
    """Outputs, input and parameter gradients, running statistics: 2 gloo ranks == 1 process (1e-5)."""
    model, x, reference = _whole_batch_reference(name)
    parts = [results[f"{name}/{split}"] for results in sync_bn_results]
    for key in ("out", "input_grad"):
        torch.testing.assert_close(torch.cat([part[key] for part in parts]), reference[key], **SYNC_TOL, msg=key)
    for rank, part in enumerate(parts):
        for kind in ("grads", "buffers"):
            assert part[kind].keys() == reference[kind].keys()
            for key, expected in reference[kind].items():
                torch.testing.assert_close(part[kind][key], expected, **SYNC_TOL, msg=f"rank {rank}: {kind} {key}")
    # The oracle is sensitive: BatchNorm on each part alone (no sync) misses by far more.
    sizes, start, alone = SPLITS[split], 0, []
    for size in sizes:
        torch.manual_seed(0)
        alone.append(SYNC_CASES[name][0]().train()(x[start:start + size]).detach())
        start += size
    assert (torch.cat(alone) - reference["out"]).abs().max() > 1e-2


# -- torchblocks train under torchrun -----------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
TORCHRUN_TIMEOUT_S = 150
TRAIN_ARGS = ["--model", "tiny_models:tiny_cnn", "--input-size", "3", "8", "8", "--batch-size", "8",
              "--epochs", "2", "--no-progress", "--metrics", "metrics.csv"]


def _torchrun(cwd, *command: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 COMMAND`` in ``cwd``, one thread per process."""
    launch = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch}
    env.update(PYTHONPATH=os.pathsep.join([REPO, TESTS, env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD_SIZE), *command],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory) -> str:
    from tiny_models import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("train-images"))


def _single_process_losses(folder: str, tmp_path) -> list:
    """The same run in this process (no torchrun): the reference for the 2-process runs."""
    from torchblocks.cli import main

    assert main(["train", folder, *TRAIN_ARGS, "--checkpoint", str(tmp_path / "single.pt"), "--log",
                 str(tmp_path / "single.csv")]) == 0
    return [row["loss"] for row in torch.load(tmp_path / "single.pt", weights_only=True)["history"]]


def _check_rank0_outputs(run: subprocess.CompletedProcess, cwd) -> list:
    """Rank 0 alone printed the epoch lines and wrote checkpoint and log (no temporary files)."""
    assert run.returncode == 0, run.stderr[-3000:]
    assert [line.split(" - ")[0] for line in run.stdout.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    assert sorted(os.listdir(cwd)) == ["checkpoint.pt", "metrics.csv"]
    saved = torch.load(os.path.join(cwd, "checkpoint.pt"), weights_only=True)
    assert saved["epoch"] == 2 and len(open(os.path.join(cwd, "metrics.csv")).read().splitlines()) == 3
    return [row["loss"] for row in saved["history"]]


@pytest.mark.slow
@pytest.mark.timeout(TORCHRUN_TIMEOUT_S + 30)
def test_torchrun_two_processes_with_sync_bn_train_like_one(train_folder, tmp_path, capsys):
    """``torchrun -m torchblocks train --sync-bn``: gloo DDP over halves of every batch gives the
    single process's losses (BatchNorm synchronised), to 1e-5."""
    reference = _single_process_losses(train_folder, tmp_path)
    cwd = tmp_path / "ddp"
    cwd.mkdir()
    run = _torchrun(cwd, "-m", "torchblocks", "train", train_folder, *TRAIN_ARGS, "--sync-bn")
    np.testing.assert_allclose(_check_rank0_outputs(run, cwd), reference, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(TORCHRUN_TIMEOUT_S + 30)
def test_torchrun_runs_the_script_and_unsynced_batchnorm_differs(train_folder, tmp_path):
    """``torchrun scripts/train.py`` runs the same command; without --sync-bn each rank normalises
    its half alone, so the losses move away from the single process's (the check above can fail)."""
    reference = _single_process_losses(train_folder, tmp_path)
    cwd = tmp_path / "script"
    cwd.mkdir()
    run = _torchrun(cwd, os.path.join(REPO, "scripts", "train.py"), train_folder, *TRAIN_ARGS)
    losses = _check_rank0_outputs(run, cwd)
    assert np.max(np.abs(np.array(losses) - reference) / np.abs(reference)) > 1e-4
