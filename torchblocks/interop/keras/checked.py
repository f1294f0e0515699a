"""``from_keras``: the conversion (``convert``), checked against Keras layer by layer (``verify``)
when inputs are given."""
from typing import Any

from .convert import KerasModel, convert
from .verify import VerificationError
from .verify import verify as verify_conversion

__all__ = ["from_keras"]


def from_keras(keras_model: Any, verify: Any = None) -> KerasModel:
    """Convert a Keras Sequential or Functional model into a torch module, weights included.

    The result reproduces the Keras model exactly and trains like it: it comes back in **eval
    mode** (Keras' inference behaviour; call ``.train()`` to train it), BatchNormalization becomes
    a trainable ``tb.BatchNorm`` (never folded) with Keras' epsilon and its momentum converted
    (torch 1 - m), Dropout keeps its rate, layers frozen in Keras (``trainable=False``) have
    parameters that need no gradient, and a frozen BatchNormalization keeps normalising with its
    moving statistics in training (``layers.FrozenBatchNorm``).

    Images: a ``channels_last`` model's (N, H, W, C) inputs and maps are (N, C, H, W) here; a
    ``channels_first`` model keeps its layout. Vectors (N, F) are unchanged. Keras ``Flatten``
    orders features (h, w, c): the converted model flattens (c, h, w) and permutes the rows of the
    Dense/BatchNormalization layers reading them, or flattens in Keras' order where its features
    reach anything else. A final softmax is kept (train with ``nn.NLLLoss`` on its log, or build the
    Keras model with ``classifier_activation=None``).

    Inputs are the forward's arguments, named after the Keras inputs (a dict input's keys), in
    Keras' order; a dict of them works too. Outputs keep Keras' structure: a tensor, a tuple, or a
    dict with Keras' keys.

    Anything that cannot be reproduced exactly is refused with a ``ValueError`` naming the layer and
    why: Lambda and custom layers, subclassed models, regularizers and constraints (a training
    behaviour a module cannot carry), mixed data formats, mixed precision. A float64 model converts
    to a float64 module (without BatchNormalization and LayerNormalization, which Keras computes in
    float32 even there).

    With ``verify=inputs`` (in the converted module's layout, as ``verify`` takes them) the result
    is checked layer by layer first; a conversion that is not exact raises ``VerificationError``
    (a ``ValueError``) whose message is the per-layer table, naming the first divergent layer.

    Returns:
        A ``KerasModel`` (a ``torch.fx.GraphModule``) with one submodule per Keras layer, named after
        it and registered in ``model.layers`` order; each ``call_module`` node records its Keras
        layer in ``node.meta["keras_layer"]`` (name) and ``node.meta["keras_class"]``. It is
        scriptable with ``torch.jit.script`` and traceable with ``torch.fx``/``torch.export``.
    """
    module = convert(keras_model)
    if verify is not None:
        report = verify_conversion(keras_model, module, verify)
        if not report.exact:
            raise VerificationError(report)
    return module
