"""Pooling: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D.

'same' average pooling averages the real pixels of each window only, as Keras documents and its
TensorFlow and JAX backends compute (Keras 3.15's torch backend repeats the edge pixels where the
padding is uneven).
"""
from torch import nn

from ....pooling import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from .registry import LayerCall, check_data_format, check_rank, converts


@converts("MaxPooling2D", "AveragePooling2D")
def _pooling(call: LayerCall) -> nn.Module:
    check_rank(call, (4,))
    check_data_format(call)
    pool = MaxPool2d if type(call.layer).__name__ == "MaxPooling2D" else AvgPool2d
    return pool(tuple(call.config["pool_size"]), tuple(call.config["strides"]), call.config["padding"])


@converts("GlobalAveragePooling2D", "GlobalMaxPooling2D")
def _global_pooling(call: LayerCall) -> nn.Module:
    check_rank(call, (4,))
    check_data_format(call)
    pool = GlobalAvgPool2d if type(call.layer).__name__ == "GlobalAveragePooling2D" else GlobalMaxPool2d
    return pool(bool(call.config["keepdims"]))
