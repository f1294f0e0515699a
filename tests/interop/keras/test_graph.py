"""``interop.keras.graph``: the one reader of Keras' private graph attributes, and its refusals."""
import subprocess
import sys
import types

import pytest

import torchblocks as tb
from keras_oracle import keras
from torchblocks.interop.keras import graph


def _two_branch_model():
    layers = keras().layers
    x = keras().Input((6, 6, 2), name="image")
    a = layers.Conv2D(3, 1, name="a")(x)
    b = layers.Conv2D(3, 1, name="b")(x)
    return keras().Model(x, layers.Add(name="sum")([a, b]), name="branches")


def test_graph_records_inputs_nodes_and_outputs_in_an_execution_order():
    model = _two_branch_model()
    source = graph.keras_graph(keras(), model)
    assert [(i.name, i.shape) for i in source.inputs] == [("image", (None, 6, 6, 2))]
    assert [n.layer.name for n in source.nodes] == ["a", "b", "sum"]
    a, b, total = source.nodes
    assert a.inputs == b.inputs == (source.inputs[0].tensor,)
    assert total.inputs == a.outputs + b.outputs and source.outputs == list(total.outputs)
    assert total.input_shapes == ((None, 6, 6, 3), (None, 6, 6, 3))


def test_graph_refuses_another_keras_major_version():
    fake = types.SimpleNamespace(__version__="4.0.0")
    with pytest.raises(NotImplementedError, match=r"Keras 3\.x models .* found keras 4\.0\.0"):
        graph.keras_graph(fake, None)


def test_graph_refuses_subclassed_models():
    class Doubler(keras().Model):
        def call(self, x):
            return 2 * x

    model = Doubler()
    model(keras().ops.ones((1, 3)))
    with pytest.raises(ValueError, match="of class Doubler is subclassed"):
        tb.interop.keras.from_keras(model)


def test_interop_is_reachable_from_the_top_level_without_importing_keras():
    code = (
        "import sys, torchblocks as tb; "
        "assert callable(tb.interop.keras.from_keras) and callable(tb.interop.torchvision.from_torchvision); "
        "assert 'keras' not in sys.modules, 'keras imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
