"""Fully connected layer with an optional activation. Keras: ``Dense``."""
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from .activations import ActivationArg, KerasActivation, apply_activation
from ._checks import dtype_error
from .padding import check_positive_int, check_weight_size


@torch.fx.wrap
def _check_features(x: Tensor, in_features: int, layer: str) -> None:
    """Raise ``ValueError`` unless the last dim of ``x`` is ``in_features`` (a torch.fx leaf)."""
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"{layer} expects inputs whose last dim is in_features={in_features}; received shape {x.shape}."
        )


class Dense(KerasActivation, nn.Linear):
    """``nn.Linear`` with Keras' ``activation=``. Keras: ``Dense``.

    (N, *, in_features) -> (N, *, out_features); same parameters and state-dict keys as
    ``nn.Linear`` (Keras stores the kernel transposed: (in_features, out_features)). An activation
    given by name is applied as a function (the layer stays a leaf module); a module is kept as
    the ``act`` child.
    """

    activation: Final[str]
    has_activation: Final[bool]
    module_activation: Final[bool]
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
        self._init_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """(N, *, in_features) -> (N, *, out_features)."""
        _check_features(x, self.in_features, self.layer_name)
        if torch.jit.is_scripting():
            x = F.linear(x, self.weight, self.bias)
        else:
            x = self._linear_or_explain(x)
        if self.module_activation:
            x = self.act(x)
        elif self.has_activation:
            x = apply_activation(x, self.activation)
        return x

    @torch.jit.unused
    def _linear_or_explain(self, x: Tensor) -> Tensor:
        # Eager only (TorchScript has no try): a dtype mismatch is named after torch refused it.
        try:
            return F.linear(x, self.weight, self.bias)
        except RuntimeError as error:
            explained = dtype_error(self.layer_name, x, error, self.weight)
            if explained is None:
                raise
            raise explained from error

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()
