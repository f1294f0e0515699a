"""What folding BatchNorm into the preceding convolutions (``tb.fuse_bn``) removes."""
from dataclasses import dataclass

from torch import nn

from .counting import CountReport, Inputs, count


@dataclass(frozen=True)
class FoldingSavings:
    """Counts of ``model`` before and after ``tb.fuse_bn``, in eval mode.

    Each folded BN drops its 2·C affine parameters and 2·C running statistics and gives its conv a
    C-element bias where it had none; its MACs vanish: fvcore's eval-mode cost, 2 per element of
    its input with affine parameters (a multiply and an add after normalising), 1 without.
    """

    before: CountReport
    after: CountReport

    @property
    def params_removed(self) -> int:
        return self.before.params - self.after.params

    @property
    def buffers_removed(self) -> int:
        return self.before.buffers - self.after.buffers

    @property
    def macs_removed(self) -> int:
        return self.before.macs - self.after.macs

    def __str__(self) -> str:
        return (
            f"fuse_bn removes {self.params_removed:,} trainable parameters, {self.buffers_removed:,} "
            f"BatchNorm statistics and {self.macs_removed:,} MACs (FLOPs = 2 x MACs): "
            f"{self.before.macs:,} -> {self.after.macs:,} MACs."
        )


def folding_savings(model: nn.Module, inputs: Inputs) -> FoldingSavings:
    """Count ``model`` and ``tb.fuse_bn(model)`` on ``inputs`` (a tensor or tuple of tensors)."""
    from ..fusion import fuse_bn

    return FoldingSavings(count(model, inputs), count(fuse_bn(model), inputs))
