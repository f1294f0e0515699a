"""``from_keras``: Keras Sequential and Functional models converted to torch modules.

Keras 3 on the torch backend is the oracle, at 1e-5 relative, after checking that the comparison
could fail.
"""
import keyword

import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    book_separable_model,
    calibrate_bn,
    check_scripted,
    images,
    keras,
    keras_nchw,
    nchw_to_nhwc,
    randomize,
    rel_error,
    run_keras_nchw,
    run_torch,
    to_numpy,
)

# The README's path: `import torchblocks as tb`, then `tb.interop.keras`.
from_keras = tb.interop.keras.from_keras
load_keras_weights = tb.interop.keras.load_keras_weights

RTOL = 1e-5


def _check_conversion(model, x: np.ndarray, rtol: float = RTOL, training: bool = False) -> nn.Module:
    """from_keras(model) reproduces model on x (NCHW); returns the converted module."""
    module = from_keras(model)
    module.train(training)
    expected = keras_nchw(model, x, training=training)
    assert_rel_close(run_torch(module, x), expected, rtol)
    return module


def _identity_block():
    L = keras().layers
    x = keras().Input((9, 7, 128))
    y = L.Conv2D(128, 3, activation="relu", padding="same")(x)
    y = L.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = L.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = L.add([y, x])
    return keras().Model(x, y)


def _downsampling_block():
    L = keras().layers
    x = keras().Input((10, 8, 64))
    y = L.Conv2D(128, 3, activation="relu", padding="same")(x)
    y = L.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = L.MaxPooling2D(2, strides=2)(y)
    residual = L.Conv2D(128, 1, strides=2, padding="same")(x)
    y = L.add([y, residual])
    return keras().Model(x, y)


def _conv_bn():
    L = keras().layers
    model = keras().Sequential([keras().Input((9, 8, 3))])
    model.add(L.Conv2D(32, 3, activation="relu"))
    model.add(L.BatchNormalization())
    return model


def _dense_bn():
    L = keras().layers
    model = keras().Sequential([keras().Input((20,))])
    model.add(L.Dense(32, activation="relu"))
    model.add(L.BatchNormalization())
    return model


# The book's snippets: (Keras model factory, NCHW/(N, F) input shape, torchblocks block factory).
BOOK_SNIPPETS = [
    (_identity_block, (2, 128, 9, 7), lambda: tb.IdentityResidualBlock(128)),
    (_downsampling_block, (2, 64, 10, 8), lambda: tb.DownsamplingResidualBlock(64, 128)),
    (_conv_bn, (4, 3, 9, 8), lambda: tb.ConvBN(3, 32, 3)),
    (_dense_bn, (6, 20), lambda: tb.DenseBN(20, 32)),
]


@pytest.mark.parametrize("make_model, shape, make_block", BOOK_SNIPPETS)
def test_book_snippets(rng, make_model, shape, make_block):
    """from_keras reproduces the snippet, and so does the ready-made torchblocks block after
    load_keras_weights; BN statistics come from a real batch."""
    model = make_model()
    randomize(model, rng)
    x = images(rng, *shape)
    calibrate_bn(model, x if x.ndim == 2 else nchw_to_nhwc(x))
    x = images(rng, *shape)
    _check_conversion(model, x)
    block = make_block().eval()
    load_keras_weights(block, model)
    assert_rel_close(run_torch(block, x), keras_nchw(model, x, training=False), RTOL)


@pytest.mark.parametrize("make_model, shape", [(_conv_bn, (4, 3, 9, 8)), (_dense_bn, (6, 20))])
def test_batchnorm_training_mode(rng, make_model, shape):
    model = make_model()
    randomize(model, rng)
    _check_conversion(model, images(rng, *shape), training=True)


def _random_separable_convnet(rng: np.random.Generator):
    model = book_separable_model()  # verbatim, softmax included
    randomize(model, rng)
    # Small logits keep the softmax out of saturation, where every input gives the same one-hot.
    last = model.layers[-1]
    last.kernel.assign(last.kernel * 0.05)
    return model


# torch.fx.GraphModule's own __init__ triggers this TorchScript warning when scripted.
@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_book_separable_model(rng):
    model = _random_separable_convnet(rng)
    x = images(rng, 2, 3, 64, 64)
    module = _check_conversion(model, x)
    probabilities = run_torch(module, x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)  # the softmax is kept
    assert rel_error(probabilities[0], probabilities[1]) > 100 * RTOL  # the oracle is sensitive
    check_scripted(module, (torch.from_numpy(x),))


def test_book_separable_model_into_separable_convnet(rng):
    """tb.models.SeparableConvNet returns logits: softmax(logits) is the Keras model's output."""
    model = _random_separable_convnet(rng)
    x = images(rng, 2, 3, 64, 64)
    net = tb.models.SeparableConvNet(3, 10).eval()
    load_keras_weights(net, model)
    probabilities = torch.softmax(torch.from_numpy(run_torch(net, x)), dim=1).numpy()
    assert_rel_close(probabilities, keras_nchw(model, x), RTOL)


def _flatten_model(tail: str):
    L = keras().layers
    inp = keras().Input((5, 6, 4))
    x = L.Conv2D(3, 3, padding="same", activation="relu")(inp)
    x = L.Flatten()(x)
    if tail == "flatten":
        return keras().Model(inp, x)
    if tail == "dropout_bn_dense":
        x = L.BatchNormalization()(L.Dropout(0.5)(x))
    return keras().Model(inp, L.Dense(7)(x))


@pytest.mark.parametrize("tail", ["dense", "dropout_bn_dense", "flatten"])
@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_flatten_dense_feature_order(rng, tail):
    """Keras flattens (h, w, c): the converted Dense rows are permuted (or, where the flattened
    features are an output, they are flattened in Keras order)."""
    model = _flatten_model(tail)
    randomize(model, rng)
    x = images(rng, 2, 4, 5, 6)
    module = _check_conversion(model, x)
    if tail == "dense":
        # The naive port (torch's (c, h, w) flatten, unpermuted kernel) is wrong: the check can fail.
        conv_out = torch.from_numpy(run_keras_nchw(model.layers[1], x))
        kernel, bias = (torch.from_numpy(to_numpy(w)) for w in model.layers[3].weights)
        naive = (conv_out.flatten(1) @ kernel + bias).numpy()
        assert rel_error(naive, run_torch(module, x)) > 1e-2
    check_scripted(module, (torch.from_numpy(x),))


def _kitchen_sink():
    """The remaining supported layers, and a nested Sequential."""
    L = keras().layers
    inp = keras().Input((11, 10, 3), name="image")
    x = L.ZeroPadding2D(((1, 0), (2, 1)))(inp)
    x = L.Conv2D(6, 4, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(center=False)(x)
    x = L.ReLU(max_value=6.0)(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6")(x)
    x = L.Dense(5, activation="relu", name="pixelwise")(x)  # on a feature map: on its channels
    x = L.AveragePooling2D(2, padding="valid")(x)
    x = L.Activation("tanh")(L.ReLU(negative_slope=0.1)(x))
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = keras().Sequential([L.Conv2D(4, 1, name="nested_conv"), L.Dropout(0.1)])(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    return keras().Model(inp, L.Dense(3)(x))


@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_other_supported_layers(rng):
    model = _kitchen_sink()
    randomize(model, rng)
    x = images(rng, 2, 3, 11, 10)
    module = _check_conversion(model, x)
    check_scripted(module, (torch.from_numpy(x),))
    assert isinstance(module.pixelwise, tb.interop.keras.layers.PointwiseDense)


def test_unsupported_layer_raises():
    L = keras().layers
    inp = keras().Input((8, 8, 3))
    x = L.Conv2D(4, 3)(inp)
    model = keras().Model(inp, L.Lambda(lambda t: t * 2.0, name="double")(x))
    with pytest.raises(ValueError, match=r"layer 'double' of class Lambda: a Lambda layer runs arbitrary Python code"):
        from_keras(model)


def test_unbuilt_sequential_raises():
    with pytest.raises(ValueError, match="has no input shape"):
        from_keras(keras().Sequential([keras().layers.Dense(2)]))


def test_converted_module_registers_layers_in_keras_order():
    model = _downsampling_block()
    module = from_keras(model)
    names = [name for name, _ in module.named_children()]
    assert names == [l.name for l in model.layers if not isinstance(l, keras().layers.InputLayer)]


def _keyword_named_model():
    """Layers and an input named with Python keywords, and layers named like GraphModule attributes."""
    L = keras().layers
    inp = keras().Input((5, 4, 3), name="lambda")
    x = L.Conv2D(4, 3, padding="same", name="class")(inp)
    x = L.BatchNormalization(name="def")(x)
    x = L.ReLU(name="forward")(x)
    x = L.GlobalAveragePooling2D(name="graph")(x)
    return keras().Model(inp, L.Dense(2, name="import")(x))


@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_python_keywords_as_keras_names(rng, tmp_path):
    """Submodules and the forward's argument get valid Python names; the Keras names stay in the
    nodes' meta, the model converts exactly, scripts, and writes as source."""
    model = _keyword_named_model()
    randomize(model, rng)
    calibrate_bn(model, nchw_to_nhwc(images(rng, 8, 3, 5, 4)))
    module = _check_conversion(model, images(rng, 3, 3, 5, 4))
    names = [name for name, _ in module.named_children()]
    assert all(name.isidentifier() and not keyword.iskeyword(name) for name in names)
    assert len(set(names) & {"forward", "graph"}) == 0 and len(names) == 5
    calls = module.graph.find_nodes(op="call_module")
    assert [n.meta["keras_layer"] for n in calls] == ["class", "def", "forward", "graph", "import"]
    (placeholder,) = module.graph.find_nodes(op="placeholder")
    assert placeholder.target.isidentifier() and not keyword.iskeyword(placeholder.target)
    x = torch.from_numpy(images(rng, 2, 3, 5, 4))
    with torch.no_grad():
        torch.testing.assert_close(module({"lambda": x}), module(x), rtol=0, atol=0)
    check_scripted(module, (x,))
    files = tb.interop.keras.to_source(model, str(tmp_path / "keywords.py"))
    with open(files.module_path, encoding="utf-8") as f:
        compile(f.read(), files.module_path, "exec")


# --------------------------------------------------------------------------- what comes back


def _two_input_model(dict_inputs: bool, dict_outputs: bool):
    L = keras().layers
    image = keras().Input((6, 5, 3), name="image")
    meta = keras().Input((4,), name="meta")
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="conv")(image))
    joined = L.Concatenate(name="joined")([x, L.Dense(4, name="embed")(meta)])
    logits, score = L.Dense(3, name="logits")(joined), L.Dense(1, name="score")(joined)
    inputs = {"zeta_image": image, "alpha_meta": meta} if dict_inputs else [image, meta]
    outputs = {"score": score, "logits": logits} if dict_outputs else [logits, score]
    return keras().Model(inputs, outputs)


@pytest.mark.parametrize("dict_inputs, dict_outputs", [(False, False), (True, True)])
def test_inputs_keep_their_keras_names_and_outputs_their_structure(rng, dict_inputs, dict_outputs):
    model = _two_input_model(dict_inputs, dict_outputs)
    randomize(model, rng)
    image, meta = images(rng, 2, 3, 6, 5), images(rng, 2, 4)
    names = ("zeta_image", "alpha_meta") if dict_inputs else ("image", "meta")
    keras_inputs = dict(zip(names, (nchw_to_nhwc(image), meta)))
    expected = model(keras_inputs if dict_inputs else list(keras_inputs.values()))
    module = from_keras(model)
    placeholders = [n.target for n in module.graph.nodes if n.op == "placeholder"]
    assert placeholders == list(names)  # positional order: Keras' (a dict's keys as written)
    torch_inputs = dict(zip(names, (torch.from_numpy(image), torch.from_numpy(meta))))
    with torch.no_grad():
        calls = [module(*torch_inputs.values()), module(**torch_inputs), module(torch_inputs)]
    for out in calls:
        if dict_outputs:
            assert list(out) == ["score", "logits"]  # Keras' keys, in Keras' order
            for key in out:
                assert_rel_close(out[key].numpy(), to_numpy(expected[key]), RTOL)
        else:
            assert isinstance(out, tuple) and len(out) == 2
            for got, want in zip(out, expected):
                assert_rel_close(got.numpy(), to_numpy(want), RTOL)
    with pytest.raises(TypeError, match=r"Received unknown keys \['other'\]"):
        module({"other": torch.from_numpy(meta)})


def test_conversion_returns_eval_mode_with_keras_training_settings(rng):
    """Eval mode on return (Keras inference), trainable BatchNorm with Keras' epsilon and momentum
    converted, Dropout rates kept, frozen Keras layers frozen."""
    L = keras().layers
    inp = keras().Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="frozen_conv", trainable=False)(inp)
    x = L.BatchNormalization(momentum=0.9, epsilon=0.01, name="bn")(x)
    x = L.BatchNormalization(name="frozen_bn", trainable=False)(x)
    x = L.SpatialDropout2D(0.25, name="spatial")(x)
    x = L.Dropout(0.4, name="drop")(L.Flatten()(x))
    model = keras().Model(inp, L.Dense(2, name="head")(x))
    module = from_keras(model)
    assert module.training is False and not any(m.training for m in module.modules())
    assert type(module.bn) is tb.BatchNorm and module.bn.bn.eps == 0.01
    assert module.bn.bn.momentum == pytest.approx(0.1) and module.bn.bn.weight.requires_grad
    assert isinstance(module.frozen_bn, tb.interop.keras.layers.FrozenBatchNorm)
    assert not any(p.requires_grad for p in module.frozen_bn.parameters())
    assert not any(p.requires_grad for p in module.frozen_conv.parameters())
    assert type(module.spatial) is nn.Dropout2d and module.spatial.p == 0.25
    assert type(module.drop) is nn.Dropout and module.drop.p == 0.4
    randomize(model, rng)
    calibrate_bn(model, nchw_to_nhwc(images(rng, 8, 3, 6, 6)))
    x = images(rng, 4, 3, 6, 6)
    module = from_keras(model)
    state = {k: v.clone() for k, v in module.frozen_bn.state_dict().items()}
    # The frozen BN normalises with its moving statistics in training too, as Keras does; the
    # trainable one with the batch's. Dropout is the identity at rate 0.
    model.get_layer("spatial").rate = model.get_layer("drop").rate = 0.0
    module.spatial.p = module.drop.p = 0.0
    module.train()
    assert_rel_close(run_torch(module, x), keras_nchw(model, x, training=True), RTOL)
    assert all(torch.equal(state[k], v) for k, v in module.frozen_bn.state_dict().items())


def test_call_module_nodes_record_their_keras_layer():
    model = _two_input_model(False, False)
    module = from_keras(model)
    nodes = {n.target: n for n in module.graph.nodes if n.op == "call_module"}
    layers = [layer for layer in model.layers if not isinstance(layer, keras().layers.InputLayer)]
    assert list(nodes) == [name for name, _ in module.named_children()]
    assert [(nodes[t].meta["keras_layer"], nodes[t].meta["keras_class"]) for t in nodes] == [
        (layer.name, type(layer).__name__) for layer in layers
    ]
    for _, sub in module.named_children():
        cls = type(sub)
        assert cls.__module__.split(".")[0] in ("torch", "torchblocks")
        assert getattr(__import__(cls.__module__, fromlist=[cls.__name__]), cls.__name__) is cls


# --------------------------------------------------------------------------- refusals


def _regularized():
    L = keras().layers
    return keras().Sequential([keras().Input((4,)), L.Dense(2, kernel_regularizer="l2", name="reg")])


def _mixed_formats():
    L = keras().layers
    inp = keras().Input((3, 8, 8))
    x = L.Conv2D(4, 3, data_format="channels_first", name="cf")(inp)
    return keras().Model(inp, L.MaxPooling2D(2, name="cl")(x))


def _bn_on_width():
    L = keras().layers
    inp = keras().Input((3, 8, 8))
    x = L.Conv2D(4, 3, data_format="channels_first")(inp)
    return keras().Model(inp, L.BatchNormalization(axis=-1, name="bn")(x))


def _sequence_input():
    return keras().Sequential([keras().Input((5, 4), name="tokens"), keras().layers.Dense(2)])


def _forced_dropout():
    L = keras().layers
    inp = keras().Input((4,))
    return keras().Model(inp, L.Dropout(0.5, name="mc")(inp, training=True))


def _mixed_precision():
    L = keras().layers
    return keras().Sequential([keras().Input((4,)), L.Dense(2, dtype="mixed_float16", name="half")])


def _float64_batch_norm():
    L = keras().layers
    inp = keras().Input((4,), dtype="float64")
    return keras().Model(inp, L.BatchNormalization(dtype="float64", name="bn64")(L.Dense(3, dtype="float64")(inp)))


def _bicubic():
    L = keras().layers
    return keras().Sequential([keras().Input((4, 4, 2)), L.UpSampling2D(2, interpolation="bicubic", name="up")])


REFUSALS = [
    (_regularized, r"layer 'reg' of class Dense: kernel_regularizer=.* set it to None"),
    (_mixed_formats, r"mixes data formats: layer 'cl' is channels_last and layer 'cf' channels_first"),
    (_bn_on_width, r"layer 'bn' of class BatchNormalization: axis=-1 is not the channel axis .* channels_first"),
    (_sequence_input, r"input 'tokens' of shape \(None, 5, 4\) is not supported: only images"),
    (_forced_dropout, r"layer 'mc' of class Dropout: called with training=True"),
    (_mixed_precision, r"layer 'half' of class Dense: compute_dtype='float16' in a float32 model is not supported"),
    (_float64_batch_norm, r"layer 'bn64' of class BatchNormalization: Keras computes this layer in float32 even"),
    (_bicubic, r"layer 'up' of class UpSampling2D: interpolation='bicubic' is not supported"),
]


@pytest.mark.parametrize("make, message", REFUSALS)
def test_what_cannot_be_reproduced_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        from_keras(make())


def test_non_keras_objects_are_refused():
    with pytest.raises(TypeError, match="Expected a keras.Model .* Received an object of type Linear"):
        from_keras(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Received an object of type Dense"):
        from_keras(keras().layers.Dense(2))
