"""Fully connected layer with an optional activation. Keras: ``Dense``."""
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from .activations import ActivationArg, get_activation, is_identity
from .padding import check_positive_int, check_weight_size


class Dense(nn.Linear):
    """``nn.Linear`` with Keras' ``activation=``. Keras: ``Dense``.

    (N, *, in_features) -> (N, *, out_features); same parameters and state-dict keys as
    ``nn.Linear`` (Keras stores the kernel transposed: (in_features, out_features)).
    """

    has_activation: Final[bool]
    layer_name: Final[str]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        activation: ActivationArg = None,
        device=None,
        dtype=None,
    ) -> None:
        check_positive_int(in_features, "in_features")
        check_positive_int(out_features, "out_features")
        check_weight_size((out_features, in_features), "`in_features`, `out_features`")
        if not isinstance(bias, bool):
            raise TypeError(f"Invalid type for argument `bias`. Expected a bool. Received bias={bias!r}.")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.layer_name = type(self).__name__
        self.act = get_activation(activation)
        self.has_activation = not is_identity(self.act)

    def forward(self, x: Tensor) -> Tensor:
        """(N, *, in_features) -> (N, *, out_features)."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self.layer_name} expects inputs whose last dim is in_features="
                f"{self.in_features}; received shape {x.shape}."
            )
        x = F.linear(x, self.weight, self.bias)
        if self.has_activation:
            x = self.act(x)
        return x
