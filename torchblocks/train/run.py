"""``train(config)``: the whole run behind ``torchblocks train``, alone or under torchrun.

Everything that can be checked is checked before the first batch and before any file is
written: the launch environment, the model and its input size, the data, and (with ``resume``)
the checkpoint. Rank 0 alone writes the checkpoint (each epoch, atomically), the CSV log and the
epoch lines; the bar of each epoch goes to stderr.
"""
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .. import optim
from ..norm import convert_sync_batchnorm
from . import checkpoint as ckpt
from .build import INITS, build, check_input, default_input, initialize, resolve
from .data import Splits, Subset, digits, image_folder, stratified_subset
from .distributed import Context, context_from_env, destroy_process_group, init_process_group
from .loop import AMP_DTYPES, Trainer

OPTIMIZERS = ("rmsprop", "adam", "sgd")
# Keras' default learning rates: RMSprop and Adam 1e-3, SGD 1e-2.
DEFAULT_LR = {"rmsprop": 1e-3, "adam": 1e-3, "sgd": 1e-2}
DATASETS = ("digits",)
LOG_COLUMNS = ("epoch", "loss", "val_loss", "val_accuracy", "seconds")


@dataclass
class TrainConfig:
    """Settings of one run; ``torchblocks train --help`` describes each.

    Exactly one of ``data`` (an image folder) and ``dataset`` ("digits") is given.
    ``batch_size`` is the global batch: under torchrun each of N processes takes batch_size / N.
    """

    model: str
    data: Optional[str] = None
    dataset: Optional[str] = None
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "rmsprop"
    lr: Optional[float] = None
    seed: int = 0
    input_size: Optional[Tuple[int, int, int]] = None
    train_fraction: float = 1.0
    val_fraction: float = 0.2
    checkpoint: str = "checkpoint.pt"
    resume: bool = False
    log: Optional[str] = None
    channels_last: bool = False
    amp: Optional[str] = None
    sync_bn: bool = False
    init: str = "he"
    device: Optional[str] = None
    workers: int = 0
    progress: bool = True


def make_optimizer(name: str, params, lr: Optional[float]) -> torch.optim.Optimizer:
    """``rmsprop``/``adam``: Keras' update rules (``torchblocks.optim``); ``sgd``: plain SGD (Keras' too)."""
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "rmsprop":
        return optim.RMSprop(params, lr=lr)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


def _invalid(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"Invalid value for argument `{name}`. Expected {expected}. Received {name}={value!r}.")


def _check_config(config: TrainConfig) -> None:
    for name, kind in (("epochs", int), ("batch_size", int), ("lr", float)):
        value = getattr(config, name)
        if name == "lr" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
            raise _invalid(name, f"a positive {kind.__name__}", value)
    for name, choices in (("optimizer", OPTIMIZERS), ("init", INITS), ("amp", (None, *AMP_DTYPES)),
                          ("dataset", (None, *DATASETS))):
        if getattr(config, name) not in choices:
            raise _invalid(name, f"one of {choices}", getattr(config, name))
    if (config.data is None) == (config.dataset is None):
        raise ValueError("give exactly one of an image folder (data) and a dataset name (--dataset digits)")
    if isinstance(config.workers, bool) or not isinstance(config.workers, int) or config.workers < 0:
        raise _invalid("workers", "an int >= 0", config.workers)
    if config.input_size is not None:
        channels, height, width = config.input_size
        if channels not in (1, 3) or height < 1 or width < 1:
            raise _invalid("input_size", "(C, H, W) with C 1 or 3 and H, W >= 1", tuple(config.input_size))
    for name in ("checkpoint", "log"):
        path = getattr(config, name)
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise FileNotFoundError(f"cannot write {name} {path!r}: expected a file in an existing, writable folder")


def load_data(config: TrainConfig, input_size: Tuple[int, int, int]) -> Splits:
    channels, height, width = input_size
    if config.dataset == "digits":
        splits = digits((height, width), channels, config.val_fraction)
    else:
        splits = image_folder(config.data, (height, width), channels, config.val_fraction)
    if config.train_fraction != 1.0:
        kept = stratified_subset(splits.train.labels, config.train_fraction)
        splits = Splits(Subset(splits.train, kept), splits.val, splits.classes, splits.source)
    return splits


def loaders(splits: Splits, config: TrainConfig, context: Context) -> Tuple[DataLoader, DataLoader, DistributedSampler]:
    """Train loader (each rank its share of every global batch) and validation loader (its share)."""
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch size {config.batch_size} does not split over {context.world_size} processes; "
            f"give a multiple of {context.world_size}"
        )
    per_rank = config.batch_size // context.world_size
    # Rank r takes positions r, r + N, ... of one seeded permutation per epoch: the union of the
    # ranks' k-th batches is the k-th batch a single process would take.
    sampler = DistributedSampler(splits.train, context.world_size, context.rank, shuffle=True, seed=config.seed)
    pin = context.device.type == "cuda"
    train = DataLoader(splits.train, per_rank, sampler=sampler, num_workers=config.workers, pin_memory=pin,
                       generator=torch.Generator().manual_seed(config.seed))
    shard = Subset(splits.val, range(context.rank, len(splits.val), context.world_size))
    val = DataLoader(shard, per_rank, shuffle=False, num_workers=config.workers, pin_memory=pin)
    return train, val, sampler


def _settings(config: TrainConfig, name: str, splits: Splits, input_size: Sequence[int], lr: float) -> Dict:
    """What a resumed run must share with the run that wrote the checkpoint."""
    return {
        "model": name, "data": splits.source, "classes": list(splits.classes), "input_size": list(input_size),
        "optimizer": config.optimizer, "lr": lr, "batch_size": config.batch_size, "seed": config.seed,
        "train_fraction": config.train_fraction, "val_fraction": config.val_fraction, "amp": config.amp,
        "channels_last": config.channels_last, "sync_bn": config.sync_bn, "init": config.init,
    }


def _csv(history: List[Dict]) -> bytes:
    lines = [",".join(LOG_COLUMNS)]
    lines += [",".join(repr(row[column]) for column in LOG_COLUMNS) for row in history]
    return ("\n".join(lines) + "\n").encode()


def _epoch_line(row: Dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs} - loss {row['loss']:.4f} - val_loss {row['val_loss']:.4f} - "
            f"val_accuracy {row['val_accuracy']:.4f} - {row['seconds']:.1f}s")


def train(config: TrainConfig, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> List[Dict]:
    """Train as ``config`` says; returns the per-epoch history (also in the checkpoint and log).

    Raises ``ValueError``/``FileNotFoundError``/``ImportError`` with one clear line for bad input,
    before any file is written.
    """
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    _check_config(config)
    context = context_from_env(config.device)
    name, factory = resolve(config.model)
    input_size = tuple(config.input_size) if config.input_size is not None else default_input(name)
    splits = load_data(config, input_size)
    train_loader, val_loader, sampler = loaders(splits, config, context)
    torch.manual_seed(config.seed)
    model = initialize(build(name, factory, len(splits.classes), input_size[0]), config.init).to(context.device)
    check_input(model, name, input_size, len(splits.classes), context.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = DEFAULT_LR[config.optimizer] if config.lr is None else float(config.lr)
    optimizer = make_optimizer(config.optimizer, model.parameters(), lr)
    settings = _settings(config, name, splits, input_size, lr)
    history: List[Dict] = []
    if config.resume:
        saved = ckpt.load(config.checkpoint)
        ckpt.check_settings(saved, settings, config.checkpoint)
        ckpt.restore(saved, model, optimizer, config.checkpoint)
        history = [dict(row) for row in saved["history"]]
    if len(history) >= config.epochs:
        if context.is_main:
            print(f"{config.checkpoint} already holds {len(history)} epochs; nothing to train "
                  f"(raise --epochs to continue)", file=stdout)
        return history
    if config.sync_bn:
        model = convert_sync_batchnorm(model)
        if context.is_main and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            print(f"note: --sync-bn: model {name!r} has no BatchNorm to synchronise", file=stderr)
    init_process_group(context)
    try:
        wrapped = model
        if context.launched:
            on_gpu = context.device.type == "cuda"
            wrapped = DistributedDataParallel(model, device_ids=[context.device] if on_gpu else None)
        trainer = Trainer(wrapped, optimizer, context, config.amp, config.channels_last)
        progress = None if config.progress else False
        for epoch in range(len(history), config.epochs):
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            loss = trainer.train_epoch(train_loader, f"epoch {epoch + 1}/{config.epochs}", progress, stderr)
            val_loss, val_accuracy = trainer.evaluate(val_loader)
            history.append(dict(epoch=epoch + 1, loss=loss, val_loss=val_loss, val_accuracy=val_accuracy,
                                seconds=round(time.perf_counter() - start, 3)))
            if context.is_main:
                ckpt.save(config.checkpoint, ckpt.make(settings, epoch + 1, history, model, optimizer))
                if config.log is not None:
                    text = _csv(history)
                    ckpt.write_atomic(config.log, lambda f: f.write(text))
                print(_epoch_line(history[-1], config.epochs), file=stdout, flush=True)
    finally:
        destroy_process_group(context)
    return history
