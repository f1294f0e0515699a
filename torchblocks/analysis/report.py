"""The result of counting a model: ``CountReport``, and the helpers both counting engines share.

Unit: fvcore's, one fused multiply-add counts 1 (called MACs here); ``flops = 2 * macs``.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, Tuple

import torch
from torch import nn

from .handlers import op_kind

@dataclass(frozen=True)
class CountReport:
    """Parameters and multiply-accumulates of one model on one input.

    Attributes:
        params: trainable parameters (``requires_grad``).
        non_trainable_params: frozen parameters.
        buffers: floating-point buffer elements (BatchNorm running mean/variance), which Keras
            counts as non-trainable weights; integer buffers (``num_batches_tracked``) excluded.
        macs: fused multiply-adds (fvcore's "flops"), at the batch size of the inputs.
        by_module: MACs per module name, ``""`` being the whole model (fvcore's keys).
        by_operator: MACs per op name (``"conv"``, ``"batch_norm"``, ``"add"``...).
        method: ``"fvcore"`` or ``"FlopCounterMode"``.
        note: why a fallback was used, else ``""``.
        unsupported_ops: ops that were counted as 0 because no handler knows them.
        input_shapes: the shapes of the inputs counted.
    """

    params: int
    non_trainable_params: int
    buffers: int
    macs: int
    by_module: Dict[str, int] = field(repr=False)
    by_operator: Dict[str, int] = field(repr=False)
    method: str = "fvcore"
    note: str = ""
    unsupported_ops: Dict[str, int] = field(default_factory=dict)
    input_shapes: Tuple[Tuple[int, ...], ...] = ()

    @property
    def flops(self) -> int:
        """2 × MACs: a multiply and an add each count one."""
        return 2 * self.macs

    @property
    def total_params(self) -> int:
        """Trainable plus non-trainable parameters."""
        return self.params + self.non_trainable_params

    @property
    def keras_count_params(self) -> int:
        """What Keras' ``count_params()`` reports: all parameters plus the BN moving statistics."""
        return self.total_params + self.buffers

    @property
    def macs_by_kind(self) -> Dict[str, int]:
        """MACs of convolutions and matrix products (``"conv_dense"``), normalization
        (``"norm"``), activations (``"activation"``) and the rest (``"other"``: adds, pooling)."""
        kinds = {"conv_dense": 0, "norm": 0, "activation": 0, "other": 0}
        for name, macs in self.by_operator.items():
            kinds[op_kind(name)] += macs
        return kinds

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready summary (without the per-module breakdown)."""
        return {
            "params": self.params,
            "non_trainable_params": self.non_trainable_params,
            "buffers": self.buffers,
            "keras_count_params": self.keras_count_params,
            "macs": self.macs,
            "flops": self.flops,
            "method": self.method,
            "note": self.note,
            "input_shapes": [list(s) for s in self.input_shapes],
        }


def parameter_counts(model: nn.Module) -> Tuple[int, int, int]:
    """(trainable, non-trainable, floating-point buffer elements); shared tensors count once."""
    trainable = frozen = 0
    for p in model.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return trainable, frozen, buffers


@contextlib.contextmanager
def temporary_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every submodule in train/eval mode, then restore each one's own flag and buffers.

    Buffers are restored too: a training-mode forward updates BatchNorm running statistics, and
    counting must leave the caller's model as it found it. Frozen ScriptModules, which have no
    ``training`` flag, are left alone.
    """
    modes = [(m, m.training) for m in model.modules() if hasattr(m, "training")]
    saved = [b.detach().clone() for b in model.buffers()] if training else []
    for module, _ in modes:
        module.training = training
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)
