"""Transposed convolution with Keras' output sizes and pixel alignment."""
from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ....activations import ActivationArg, KerasActivation, apply_activation


def _transpose_crops(size_k: int, stride: int, dilation: int, padding: str, output_padding: int) -> Tuple[int, int]:
    """How much of the full transposed convolution (torch padding 0) Keras keeps on one axis:
    (crop at the start, crop at the end); a negative crop appends that many zeros (before the bias).

    Keras' rule (as TensorFlow and JAX compute it): the stride-dilated input is padded with
    (left, right) and convolved; the full result corresponds to left = right = k - 1.
    """
    k = (size_k - 1) * dilation + 1
    if padding == "valid":
        extra = max(k, stride) - k if output_padding < 0 else output_padding
        left, right = k - 1, k - 1 + extra
    else:
        pad = stride + k - 2 if output_padding < 0 else k + k % 2 - 2 + output_padding
        left = min(pad // 2 + pad % 2, k - 1)
        right = pad - left
    return k - 1 - left, k - 1 - right


class Conv2dTranspose(KerasActivation, nn.ConvTranspose2d):
    """Transposed convolution with Keras' 'valid'/'same' output sizes and pixel alignment.
    Keras: ``Conv2DTranspose``.

    (N, C_in, H, W) -> (N, C_out, H', W') with H' = H·s ('same') or (H - 1)·s + k_eff ('valid'),
    plus ``output_padding`` where given (-1: Keras' default None). Where Keras' crop of the full
    result is what torch's ``padding``/``output_padding`` express, this is a plain
    ``nn.ConvTranspose2d``; otherwise the full result is cropped (or zero-extended) per call.
    """

    activation: Final[str]
    has_activation: Final[bool]
    module_activation: Final[bool]
    crops: Final[List[int]]
    static: Final[bool]
    padding_spec: Final[str]
    keras_output_padding: Final[List[int]]

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int], stride: Tuple[int, int] = (1, 1),
        padding: str = "valid", output_padding: Tuple[int, int] = (-1, -1), dilation: Tuple[int, int] = (1, 1),
        bias: bool = True, activation: ActivationArg = None,
    ) -> None:
        if padding not in ("valid", "same"):
            raise ValueError(
                f"Invalid value for argument `padding`. Expected 'valid' or 'same'. Received padding={padding!r}."
            )
        crops = [
            _transpose_crops(kernel_size[a], stride[a], dilation[a], padding, output_padding[a]) for a in (0, 1)
        ]
        # torch keeps full[p : L - p + op] with 0 <= op < max(stride, dilation).
        static = all(
            start >= 0 and 0 <= start - end < max(stride[a], dilation[a])
            for a, (start, end) in enumerate(crops)
        )
        torch_padding = tuple(start for start, _ in crops) if static else (0, 0)
        torch_output_padding = tuple(start - end for start, end in crops) if static else (0, 0)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, torch_padding, torch_output_padding,
            dilation=dilation, bias=bias,
        )
        self.static, self.padding_spec = static, padding
        self.keras_output_padding = [int(p) for p in output_padding]
        self.crops = [c for pair in crops for c in pair]
        self._init_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        if self.static:
            out = F.conv_transpose2d(
                x, self.weight, self.bias, self.stride, self.padding, self.output_padding, 1, self.dilation
            )
        else:
            out = F.conv_transpose2d(x, self.weight, None, self.stride, 0, 0, 1, self.dilation)
            top, bottom, left, right = self.crops
            out = F.pad(out, [-left, -right, -top, -bottom])
            if self.bias is not None:
                out = out + self.bias.view(1, -1, 1, 1)
        if self.module_activation:
            out = self.act(out)
        elif self.has_activation:
            out = apply_activation(out, self.activation)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding_spec!r}, output_padding={tuple(self.keras_output_padding)}, "
            f"dilation={self.dilation}, bias={self.bias is not None}" + self._activation_repr()
        )
