"""Hypothesis strategies for small random models: the inputs of the differential tests of
``fuse_bn``, ``optimize_for_inference`` and the exporters.

Each drawn ``Generated`` holds a model in eval mode, whose BatchNorm statistics come from a real
batch (``reliability_cases.calibrate``), and its example inputs. Models mix every public
torchblocks layer with plain torch layers and the awkward cases a rewrite can get wrong: a conv
module called twice, a weight tied to a second conv, forward code that reads a conv's weight
itself, a ReLU instance shared by two calls, BatchNorm on either axis, branches joined by a sum
or a concatenation, squeeze-excitation gates and inverted residual blocks (EfficientNet's and
MobileNet's), a LeNet-style ``x.view(x.size(0), -1)`` head, vector inputs, ``Conv1d`` /
``Conv3d`` models and models that take an image and a vector.
"""
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

import torchblocks as tb
from reliability_cases import calibrate


def differential(max_examples: int) -> settings:
    """Settings of a differential test: reproducible examples, no deadline (models build slowly)."""
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )


class Generated(NamedTuple):
    model: nn.Module
    inputs: Tuple[torch.Tensor, ...]
    kinds: Tuple[str, ...]

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        shapes = [tuple(x.shape) for x in self.inputs]
        return f"Generated(kinds={self.kinds}, inputs={shapes},\n{self.model})"


class TwiceCalled(nn.Module):
    """One conv module called twice, with a BatchNorm after each call: neither may be folded."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = tb.Conv2d(c, c, 3, padding="same")
        self.bn1, self.bn2 = tb.BatchNorm(c), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv(F.relu(self.bn1(self.conv(x)))))


class TiedWeights(nn.Module):
    """Two convs sharing one weight ``Parameter``; a BatchNorm follows the first only."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = tb.Conv2d(c, c, 3, padding="same", bias=False)
        self.b.weight = self.a.weight
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.b(x)


class ReadsWeight(nn.Module):
    """Forward code that reads a conv's weight itself besides calling the conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.bn = tb.BatchNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + F.conv2d(x, self.conv.weight)


class SharedReLU(nn.Module):
    """One ReLU instance applied after two convs."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = tb.Conv2d(c, c, 3, padding="same"), nn.Conv2d(c, c, 1)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.bn(self.conv1(x)))))


class LastAxisBN(nn.Module):
    """Keras' ``axis=-1`` BatchNorm on a channels-last view of the feature map."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = tb.Conv2d(c, c, 1)
        self.bn = tb.BatchNorm(c, axis=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Branches(nn.Module):
    """Two conv + BN branches joined by a sum or by a concatenation of channels."""

    def __init__(self, c: int, join: str) -> None:
        super().__init__()
        self.left = nn.Sequential(tb.SeparableConv2d(c, c, 3, padding="same"), tb.BatchNorm(c), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.join = join

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.join == "cat":
            return torch.cat([self.left(x), self.right(x)], 1)
        return self.left(x) + self.right(x)


class SqueezeExcitation(nn.Module):
    """EfficientNet's gate: global pool, two 1x1 convs on one pixel, sigmoid, times the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce, self.expand = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x))))) * x


class ViewHead(nn.Module):
    """LeNet's head: ``x.view(x.size(0), -1)`` straight after a conv, then a linear layer."""

    def __init__(self, c: int, h: int, w: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 2, 1)
        self.fc = nn.Linear(2 * h * w, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


class ImageAndVector(nn.Module):
    """An image net and a vector net whose features meet in one dense layer."""

    def __init__(self, image: nn.Module, image_features: int, vector: nn.Module, vector_features: int) -> None:
        super().__init__()
        self.image, self.vector = image, vector
        self.pool = tb.GlobalAvgPool2d()
        self.head = tb.Dense(image_features + vector_features, 3)

    def forward(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.pool(self.image(img)), self.vector(vec)], 1))


def _act(draw) -> nn.Module:
    return draw(st.sampled_from([
        lambda: nn.Identity(), lambda: nn.ReLU(), lambda: nn.ReLU(inplace=True), lambda: nn.SiLU(), lambda: nn.ReLU6(),
    ]))()


def _bn(draw, c: int) -> nn.Module:
    return draw(st.sampled_from([lambda: nn.Identity(), lambda: tb.BatchNorm(c), lambda: nn.BatchNorm2d(c)]))()


# Image blocks: name -> builder(draw, channels) -> module. Each keeps H and W >= 2 from >= 4.
IMAGE_BLOCKS: Dict[str, Callable] = {
    "conv": lambda d, c: nn.Sequential(
        d(st.sampled_from([
            lambda: nn.Conv2d(c, c + 1, 3, padding=1),
            lambda: tb.Conv2d(c, c + 1, 3, padding="same"),
            lambda: tb.Conv2d(c, c + 1, 3, 2, "same"),
            lambda: tb.Conv2d(c, c + 1, 2, padding="valid", bias=False),
            lambda: tb.Conv2d(c, c + 1, 3, padding="same", activation="relu"),
        ]))(), _bn(d, c + 1), _act(d),
    ),
    "depthwise": lambda d, c: nn.Sequential(
        tb.DepthwiseConv2d(c, 3, d(st.sampled_from([1, 2])), "same", depth_multiplier=d(st.sampled_from([1, 2]))),
    ),
    "separable": lambda d, c: nn.Sequential(
        tb.SeparableConv2d(c, c, 3, padding="same", bias=d(st.booleans())), _bn(d, c), _act(d)),
    "convbn": lambda d, c: tb.ConvBN(c, c, 3, padding="same"),
    "residual_identity": lambda d, c: tb.Residual(
        nn.Sequential(tb.Conv2d(c, c, 3, padding="same", bias=False), tb.BatchNorm(c), nn.ReLU())),
    "residual_projection": lambda d, c: tb.Residual(
        nn.Sequential(tb.SeparableConv2d(c, c + 2, 3, 2, "same"), tb.BatchNorm(c + 2)),
        tb.Projection(c, c + 2, 2, norm=d(st.booleans()))),
    "identity_block": lambda d, c: tb.IdentityResidualBlock(c, 3),
    "downsampling_block": lambda d, c: tb.DownsamplingResidualBlock(c, c + 1, 3),
    "pool": lambda d, c: d(st.sampled_from([
        lambda: tb.MaxPool2d(2), lambda: tb.MaxPool2d(3, 2, "same"), lambda: tb.AvgPool2d(3, 1, "same"),
        lambda: tb.AvgPool2d(2, 2, "same"), lambda: nn.MaxPool2d(2),
    ]))(),
    "twice_called": lambda d, c: TwiceCalled(c),
    "tied_weights": lambda d, c: TiedWeights(c),
    "reads_weight": lambda d, c: ReadsWeight(c),
    "shared_relu": lambda d, c: SharedReLU(c),
    "bn_last_axis": lambda d, c: LastAxisBN(c),
    "branches": lambda d, c: Branches(c, d(st.sampled_from(["add", "cat"]))),
    "squeeze_excitation": lambda d, c: SqueezeExcitation(c),
    "mobile_block": lambda d, c: tb.Residual(nn.Sequential(
        nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU6(inplace=True),
        nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False), nn.BatchNorm2d(2 * c), nn.Hardswish(),
        nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.Dropout(0.2))),
}

IMAGE_HEADS = ("feature_map", "global_max_pool_keepdims", "pool_dense", "view_linear", "flatten_dense_bn")


def _out_shape(module: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    with torch.no_grad():
        return tuple(module.eval()(torch.zeros(shape)).shape)


def _head(draw, name: str, shape: Tuple[int, ...]) -> nn.Module:
    _, c, h, w = shape
    if name == "feature_map":
        return nn.Identity()
    if name == "global_max_pool_keepdims":
        return tb.GlobalMaxPool2d(keepdims=True)
    if name == "pool_dense":
        # DenseBN ends in ReLU then BN: a linear read-out keeps a small batch's output alive.
        return nn.Sequential(tb.GlobalAvgPool2d(), draw(st.sampled_from([
            lambda: tb.Dense(c, 3, activation="tanh"), lambda: nn.Sequential(tb.DenseBN(c, 4), nn.Linear(4, 3))]))())
    if name == "view_linear":
        return ViewHead(c, h, w)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 4), nn.BatchNorm1d(4))


@st.composite
def _image_net(draw, max_blocks: int = 3) -> Tuple[nn.Module, Tuple[int, ...], List[str]]:
    batch, c, size = draw(st.integers(2, 3)), draw(st.integers(2, 4)), draw(st.integers(7, 10))
    shape = (batch, c, size, size)
    # A conv stem first: every model has a weight for the sensitivity check to perturb.
    names = ["conv"] + draw(st.lists(st.sampled_from(sorted(IMAGE_BLOCKS)), min_size=0, max_size=max_blocks))
    blocks = []
    for name in names:
        if min(shape[2:]) < 4:
            break
        if name == "downsampling_block" and (shape[2] % 2 or shape[3] % 2):
            continue  # Keras' block (and ours) needs even sizes: pooling floors, the shortcut rounds up
        block = IMAGE_BLOCKS[name](draw, shape[1])
        blocks.append(block)
        shape = _out_shape(block, shape)
    return nn.Sequential(*blocks), (batch, c, size, size), names


def _seed(draw) -> None:
    """Seed torch's generator from the example, so that hypothesis can replay and shrink it."""
    torch.manual_seed(draw(st.integers(0, 2**31 - 1), label="torch seed"))


@st.composite
def image_models(draw) -> Generated:
    _seed(draw)
    body, shape, names = draw(_image_net())
    head_name = draw(st.sampled_from(IMAGE_HEADS))
    head = _head(draw, head_name, _out_shape(body, shape))
    x = torch.randn(shape)
    return Generated(calibrate(nn.Sequential(OrderedDict(body=body, head=head)), x), (x,), tuple(names) + (head_name,))


VECTOR_LAYERS: Dict[str, Callable] = {
    "dense": lambda d, f: tb.Dense(f, f + 1, activation=d(st.sampled_from([None, "relu"]))),
    "linear_bn1d_relu": lambda d, f: nn.Sequential(nn.Linear(f, f), nn.BatchNorm1d(f), nn.ReLU()),
    "densebn": lambda d, f: tb.DenseBN(f, f),
    "batchnorm": lambda d, f: tb.BatchNorm(f, axis=d(st.sampled_from([1, -1]))),
    "projection_vector": lambda d, f: tb.Projection(f, f + 2, norm=d(st.booleans()), vector=True),
}


@st.composite
def _vector_net(draw) -> Tuple[nn.Module, int, List[str]]:
    features = draw(st.integers(2, 6))
    names = draw(st.lists(st.sampled_from(sorted(VECTOR_LAYERS)), min_size=1, max_size=3))
    layers, f = [], features
    for name in names:
        layer = VECTOR_LAYERS[name](draw, f)
        layers.append(layer)
        f = _out_shape(layer, (2, f))[1]
    return nn.Sequential(*layers), features, names


@st.composite
def vector_models(draw) -> Generated:
    _seed(draw)
    net, features, names = draw(_vector_net())
    # A linear read-out: a last ReLU could zero a small batch's whole output.
    net.append(nn.Linear(_out_shape(net, (2, features))[1], 2))
    x = torch.randn(draw(st.integers(2, 4)), features)
    return Generated(calibrate(net, x), (x,), tuple(names))


@st.composite
def conv1d_3d_models(draw) -> Generated:
    _seed(draw)
    dims = draw(st.sampled_from([1, 3]))
    conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv3d, nn.BatchNorm3d)
    c = draw(st.integers(2, 4))
    net = nn.Sequential(conv(c, 4, 3, padding=1, bias=draw(st.booleans())), bn(4), nn.ReLU(), conv(4, 3, 1), bn(3))
    x = torch.randn((2, c) + (draw(st.integers(3, 6)),) * dims)
    return Generated(calibrate(net, x), (x,), (f"conv{dims}d",))


@st.composite
def image_vector_models(draw) -> Generated:
    _seed(draw)
    body, shape, names = draw(_image_net(max_blocks=2))
    vector, features, vector_names = draw(_vector_net())
    vector_out = _out_shape(vector, (2, features))[1]
    model = ImageAndVector(body, _out_shape(body, shape)[1], vector, vector_out)
    img, vec = torch.randn(shape), torch.randn(shape[0], features)
    calibrate(model, img, vec)
    return Generated(model, (img, vec), tuple(names) + tuple(vector_names) + ("image+vector",))


def any_model() -> st.SearchStrategy:
    """Every kind of generated model; image models, the richest, most often."""
    return st.one_of(image_models(), image_models(), vector_models(), conv1d_3d_models(), image_vector_models())


def tolerance(expected: torch.Tensor, dtype_tol: float = 1e-4) -> float:
    """The check ``optimize_for_inference`` applies: atol + rtol * max|expected| (float32)."""
    return dtype_tol + dtype_tol * float(expected.abs().max())


def sensitive_reference(generated: Generated, dtype_tol: float = 1e-4) -> Tuple[torch.Tensor, float]:
    """The eager output of ``generated`` and the tolerance to meet it within (``tolerance``),
    once ``assert_sensitive`` has shown that tolerance can catch a wrong answer."""
    with torch.no_grad():
        expected = generated.model(*generated.inputs)
    tol = tolerance(expected, dtype_tol)
    assert_sensitive(generated, tol)
    return expected, tol


def assert_sensitive(generated: Generated, tol: float) -> None:
    """The oracle can fail: another input, and 10% noise on the weights (each element of every
    conv, dense and BatchNorm weight scaled by 1 + 0.1 z), move the eager output by far more than
    ``tol``."""
    model, inputs = generated.model, generated.inputs
    generator = torch.Generator().manual_seed(12345)  # not the global stream the inputs came from
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    saved = [w.clone() for w in weights]
    with torch.no_grad():
        expected = model(*inputs)
        other = model(*(torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in inputs))
        for w in weights:
            w.mul_(1 + 0.1 * torch.randn(w.shape, generator=generator, dtype=w.dtype))
        try:
            perturbed = model(*inputs)
        finally:
            for w, value in zip(weights, saved):
                w.copy_(value)
    assert float((other - expected).abs().max()) > 10 * tol
    assert float((perturbed - expected).abs().max()) > 10 * tol
