"""One epoch of training and one evaluation pass, on one process or one rank of a torchrun job."""
import contextlib
import sys
from typing import Callable, Optional, TextIO, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .distributed import Context, sum_over_ranks

AMP_DTYPES = {"bf16": torch.bfloat16}
StepCallback = Callable[[int, float], None]


class Trainer:
    """Categorical cross-entropy training of ``model`` (logits out) with ``optimizer``.

    ``model`` may be wrapped in ``DistributedDataParallel``; losses and accuracies are summed over
    every rank, so each rank reports the figures of the whole batch.

    Args:
        model: the (possibly DDP-wrapped) model, on ``context.device``.
        optimizer: any ``torch.optim`` optimizer over its parameters.
        context: rank, world size and device.
        amp: None or "bf16" (``torch.autocast`` with bfloat16; no gradient scaling needed).
        channels_last: feed inputs in ``torch.channels_last`` memory format.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, context: Context,
                 amp: Optional[str] = None, channels_last: bool = False) -> None:
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(
                f"Invalid value for argument `amp`. Expected None or one of {tuple(AMP_DTYPES)}. Received amp={amp!r}."
            )
        self.model, self.optimizer, self.context = model, optimizer, context
        # Evaluation runs on the unwrapped model: DDP's forward broadcasts buffers, a collective
        # that would hang when ranks hold different numbers of validation batches.
        self.module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.amp, self.channels_last = amp, channels_last
        self.steps = 0

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.context.device.type, dtype=AMP_DTYPES[self.amp])

    def _inputs(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        device = self.context.device
        images = images.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(device, non_blocking=True)

    def train_epoch(self, loader: DataLoader, description: str = "", progress: Optional[bool] = None,
                    stream: TextIO = sys.stderr, on_step: Optional[StepCallback] = None) -> float:
        """One pass over ``loader``; returns the mean training loss over all ranks' samples.

        Args:
            progress: tqdm bar on ``stream`` (rank 0 only): True, False, or None for "only on a
                terminal".
            on_step: called as ``on_step(step, loss)`` after every optimizer step with this rank's
                batch loss.
        """
        from tqdm import tqdm

        self.model.train()
        total, count = 0.0, 0
        disable = True if progress is False or not self.context.is_main else None
        bar = tqdm(loader, desc=description, unit="batch", file=stream, disable=disable, leave=False,
                   dynamic_ncols=True)
        for images, labels in bar:
            images, labels = self._inputs(images, labels)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                logits = self.model(images)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            value = loss.item()
            total += value * len(labels)
            count += len(labels)
            if on_step is not None:
                on_step(self.steps, value)
            if disable is None:
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        bar.close()
        total, count = sum_over_ranks([total, count], self.context).tolist()
        return total / count

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> Tuple[float, float]:
        """(mean loss, accuracy) over every rank's share of ``loader``'s samples, in eval mode."""
        self.module.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for images, labels in loader:
            images, labels = self._inputs(images, labels)
            with self._autocast():
                logits = self.module(images)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
        loss_sum, correct, count = sum_over_ranks([loss_sum, correct, count], self.context).tolist()
        if count == 0:
            raise ValueError("the validation set is empty")
        return loss_sum / count, correct / count
