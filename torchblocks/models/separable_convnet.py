"""The book's depthwise-separable classifier ("Deep Learning with Python", SeparableConv2D model)."""
from collections import OrderedDict

import torch.fx
from torch import Tensor, nn
from torch.jit import Final

from ..conv import SeparableConv2d
from ..linear import Dense
from ..padding import check_positive_int
from ..pooling import GlobalAvgPool2d, MaxPool2d
from ._layers import check_input_size

torch.fx.wrap("check_input_size")

# Smallest H/W the 'valid' convs and floor pooling leave at least 1×1:
# ((n - 4) // 2 - 4) // 2 - 4 >= 1  <=>  n >= 32.
MIN_SIZE = 32


class SeparableConvNet(nn.Module):
    """SeparableConv2D stack, global average pooling and two Dense layers; returns logits.

    Keras (the book's model, 64×64×3 input, 10 classes)::

        SeparableConv2D(32, 3, activation='relu'); SeparableConv2D(64, 3, activation='relu')
        MaxPooling2D(2)
        SeparableConv2D(64, 3, activation='relu'); SeparableConv2D(128, 3, activation='relu')
        MaxPooling2D(2)
        SeparableConv2D(64, 3, activation='relu'); SeparableConv2D(128, 3, activation='relu')
        GlobalAveragePooling2D(); Dense(32, activation='relu'); Dense(num_classes, activation='softmax')

    The last layer has no softmax: in PyTorch it belongs to the loss (``nn.CrossEntropyLoss`` takes
    logits); apply ``torch.softmax(logits, 1)`` for probabilities. 38,949 parameters for 3 input
    channels and 10 classes, as Keras ``count_params()``.

    (N, in_channels, H, W) -> (N, num_classes) logits, for H, W >= 32 (64×64 in the book).

    Args:
        in_channels: C of the input.
        num_classes: number of logits.
    """

    min_size: Final[int]

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.min_size = MIN_SIZE
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_classes, "num_classes")
        self.features = nn.Sequential(
            OrderedDict(
                sepconv1=SeparableConv2d(in_channels, 32, 3, activation="relu"),
                sepconv2=SeparableConv2d(32, 64, 3, activation="relu"),
                pool1=MaxPool2d(2),
                sepconv3=SeparableConv2d(64, 64, 3, activation="relu"),
                sepconv4=SeparableConv2d(64, 128, 3, activation="relu"),
                pool2=MaxPool2d(2),
                sepconv5=SeparableConv2d(128, 64, 3, activation="relu"),
                sepconv6=SeparableConv2d(64, 128, 3, activation="relu"),
            )
        )
        self.pool = GlobalAvgPool2d()
        self.fc1 = Dense(128, 32, activation="relu")
        self.fc2 = Dense(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, num_classes) logits."""
        check_input_size(x, self.min_size, "SeparableConvNet")
        return self.fc2(self.fc1(self.pool(self.features(x))))
