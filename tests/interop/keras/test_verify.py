"""``verify``: a converted module compared with its Keras model layer by layer.

The checks are made to fail: a corrupted weight or a wrong converter must be named as the first
divergent layer, and the tolerance must follow the dtype (a corruption float32 rounding hides is
caught in float64).
"""
import numpy as np
import pytest
import torch

import torchblocks as tb
from keras_oracle import book_separable_model, calibrate_bn, images, keras, nchw_to_nhwc, randomize, snapshot
from keras_oracle import assert_unchanged

kinterop = tb.interop.keras


def _residual_bn_model():
    """Conv-BN-ReLU with a strided 1×1 projection shortcut, a shared layer and a nested model."""
    L = keras().layers
    inp = keras().Input((12, 10, 3), name="image")
    x = L.Conv2D(8, 3, padding="same")(inp)
    x = L.Activation("relu")(L.BatchNormalization()(x))
    y = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    y = L.BatchNormalization()(y)
    shortcut = L.Conv2D(16, 1, strides=2, name="projection")(x)
    z = L.ReLU()(L.add([y, shortcut]))
    shared = L.Conv2D(16, 1, padding="same", name="shared")
    z = shared(shared(z))
    z = keras().Sequential([L.Conv2D(4, 1, activation="relu", name="nested_conv")], name="nested")(z)
    z = L.Flatten()(z)
    z = L.BatchNormalization(name="feature_bn")(L.Dropout(0.5)(z))
    return keras().Model(inp, L.Dense(5, name="logits")(z))


def _calibrated(rng, make_model, shape):
    model = make_model()
    randomize(model, rng)
    calibrate_bn(model, nchw_to_nhwc(images(rng, *shape)))
    return model


def _layer_calls(model) -> list:
    """Keras layer names in the order of their calls (from the torch graph Keras' order made)."""
    module = kinterop.from_keras(model)
    return [n.meta["keras_layer"] for n in module.graph.nodes if n.op == "call_module"]


def test_exact_conversion_reports_every_layer_call(rng):
    model = _calibrated(rng, _residual_bn_model, (4, 3, 12, 10))
    module = kinterop.from_keras(model)
    x = torch.from_numpy(images(rng, 2, 3, 12, 10))
    report = kinterop.verify(model, module, x)
    calls = [l.name for l in model.layers[1:] if l.name != "shared"]
    assert [r.layer for r in report] == _layer_calls(model)
    assert sorted({r.layer for r in report}) == sorted(calls + ["shared"])
    assert [r.layer for r in report].count("shared") == 2
    assert report.exact and report.first_divergent is None
    assert all(r.tolerance == 1e-5 and r.max_rel <= 1e-5 for r in report)
    assert report.max_rel > 0  # real float32 rounding was measured, not an empty comparison
    text = str(report)
    assert text.splitlines()[0] == report.summary() and "exact" in report.summary()
    assert all(r.layer in text for r in report)
    # The last row is the model output: Keras' and the module's own outputs, in inference mode.
    expected = model(nchw_to_nhwc(x.numpy()), training=False).detach().numpy()
    actual = module.eval()(x).detach().numpy()
    assert report[-1].shape == expected.shape
    assert report[-1].max_abs == pytest.approx(float(np.abs(actual - expected).max()), rel=1e-6)


@pytest.mark.parametrize("error", [0.05, float("nan")])
def test_corrupted_weight_names_its_layer(rng, error):
    model = book_separable_model(32, 32)
    randomize(model, rng)
    module = kinterop.from_keras(model)
    x = torch.from_numpy(images(rng, 2, 3, 32, 32))
    name = model.layers[4].name  # the fourth SeparableConv2D (names are numbered per session)
    with torch.no_grad():
        getattr(module, name).pointwise.weight[5, 7] += error
    report = kinterop.verify(model, module, x)
    bad = report.first_divergent
    assert bad is not None and bad.layer == name and bad.keras_class == "SeparableConv2D"
    assert all(r.ok for r in report[:4]) and not report[4].ok
    assert f"first divergent layer {name!r} (SeparableConv2D)" in report.summary()
    assert "DIVERGES" in report.table()


def test_from_keras_verify_raises_with_the_table(rng, monkeypatch):
    """A wrong converter (average for max pooling) is caught by from_keras(verify=inputs)."""
    from torchblocks.interop.keras import convert

    model = book_separable_model(32, 32)
    randomize(model, rng)
    x = torch.from_numpy(images(rng, 2, 3, 32, 32))
    assert isinstance(kinterop.from_keras(model, verify=x), torch.fx.GraphModule)
    wrong = convert.Converter(lambda call: tb.AvgPool2d(tuple(call.config["pool_size"])))
    monkeypatch.setitem(convert.CONVERTERS, "MaxPooling2D", wrong)
    first, second = (l.name for l in model.layers if type(l).__name__ == "MaxPooling2D")
    with pytest.raises(kinterop.VerificationError, match=f"first divergent layer '{first}'") as info:
        kinterop.from_keras(model, verify=x)
    assert isinstance(info.value, ValueError)
    assert second in str(info.value)  # the table follows the summary line
    assert info.value.report.first_divergent.keras_class == "MaxPooling2D"


def _conv_stack(dtype: str):
    # Convolutions: Keras' float64 matmul (Dense) computes in float32 unless floatx is float64.
    L = keras().layers
    inp = keras().Input((5, 5, 2), dtype=dtype)
    x = L.Conv2D(8, 3, padding="same", activation="tanh", dtype=dtype, name="hidden")(inp)
    return keras().Model(inp, L.Conv2D(3, 1, dtype=dtype, name="out")(x))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float64", 1e-10)])
def test_tolerance_follows_dtype(rng, dtype, tolerance):
    """A 3e-7 relative weight error hides in float32 rounding but not in float64."""
    model = _conv_stack(dtype)
    randomize(model, rng)  # float32 values: the float64 torch copy holds them exactly
    torch_dtype = getattr(torch, dtype)
    module = kinterop.from_keras(model).to(torch_dtype)
    x = torch.from_numpy(images(rng, 4, 2, 5, 5)).to(torch_dtype)
    report = kinterop.verify(model, module, x)
    assert report.exact and all(r.tolerance == tolerance for r in report)
    assert report.max_rel < tolerance / 10
    with torch.no_grad():
        module.hidden.weight.mul_(1 + 3e-7)
    report = kinterop.verify(model, module, x)
    assert report[0].max_rel > 1e-8  # the corruption is visible in either dtype...
    assert report.exact == (dtype == "float32")  # ...and only float64 resolves it
    if dtype == "float64":
        assert report.first_divergent.layer == "hidden"


def test_less_precise_dtype_sets_the_tolerance(rng):
    """A float64 module against a float32 Keras model is held to float32's tolerance."""
    model = _conv_stack("float32")
    randomize(model, rng)
    module = kinterop.from_keras(model).double()
    report = kinterop.verify(model, module, torch.from_numpy(images(rng, 4, 2, 5, 5)).double())
    assert report.exact and {r.tolerance for r in report} == {1e-5}


def test_flatten_of_an_input_feeds_permuted_rows(rng):
    """Flatten right on the image: torch's (c, h, w) features are compared with Keras' (h, w, c)
    features permuted the same way (the Dense rows after it were)."""
    L = keras().layers
    inp = keras().Input((3, 4, 2))
    model = keras().Model(inp, L.Dense(5)(L.Flatten(name="flat")(inp)))
    randomize(model, rng)
    report = kinterop.verify(model, kinterop.from_keras(model), torch.from_numpy(images(rng, 2, 2, 3, 4)))
    assert report.exact and [r.layer for r in report][0] == "flat"


def _two_inputs():
    L = keras().layers
    image, vector = keras().Input((6, 6, 2), name="image"), keras().Input((4,), name="vector")
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(image))
    return keras().Model([image, vector], L.add([x, L.Dense(4)(vector)]))


def test_several_inputs_as_tuple_or_dict(rng):
    model = _two_inputs()
    randomize(model, rng)
    module = kinterop.from_keras(model)
    image, vector = torch.from_numpy(images(rng, 2, 2, 6, 6)), torch.from_numpy(images(rng, 2, 4))
    by_tuple = kinterop.verify(model, module, (image, vector))
    by_dict = kinterop.verify(model, module, {"vector": vector, "image": image})
    assert by_tuple.exact and [r.max_abs for r in by_tuple] == [r.max_abs for r in by_dict]
    with pytest.raises(ValueError, match=r"model takes 2 input\(s\) \['image', 'vector'\]. Received 1"):
        kinterop.verify(model, module, image)
    with pytest.raises(ValueError, match=r"no input named \['other'\]"):
        kinterop.verify(model, module, {"image": image, "vector": vector, "other": vector})


def test_bad_arguments_raise_clearly(rng):
    model = book_separable_model(32, 32)
    module = kinterop.from_keras(model)
    x = torch.from_numpy(images(rng, 2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"Input 'input_layer\w*' must have shape \(N, 3, 32, 32\), \(N, C, H, W\)"):
        kinterop.verify(model, module, x.permute(0, 2, 3, 1))  # channels-last, as Keras takes it
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        kinterop.verify(module, module, x)
    with pytest.raises(TypeError, match="Expected the converted torch module. Received the Keras"):
        kinterop.verify(model, model, x)
    with pytest.raises(TypeError, match="Expected an nn.Module"):
        kinterop.verify(model, "module", x)
    with pytest.raises(TypeError, match="Received inputs of type ndarray"):
        kinterop.verify(model, module, x.numpy())
    with pytest.raises(TypeError, match="Expected torch.float32"):
        kinterop.verify(model, module, x.double())
    with pytest.raises(ValueError, match=r"call #0 of module SeparableConvNet is 'features' \(Sequential\)"):
        kinterop.verify(model, tb.models.SeparableConvNet(3, 10), x)
    with pytest.raises(ValueError, match=r"makes 1 submodule calls where the Keras model has 11 layer calls"):
        kinterop.verify(model, torch.nn.Sequential(tb.SeparableConv2d(3, 32, 3)), x)


def test_module_state_and_mode_are_left_alone(rng):
    """verify runs the module in eval mode (BN statistics untouched) and restores its flags."""
    model = _calibrated(rng, _residual_bn_model, (4, 3, 12, 10))
    module = kinterop.from_keras(model).train()
    before = snapshot(module)
    assert kinterop.verify(model, module, torch.from_numpy(images(rng, 2, 3, 12, 10))).exact
    assert_unchanged(module, before)
    assert all(m.training for m in module.modules())
