"""``interop.keras.graph``: the one reader of Keras' private graph attributes, and its refusals."""
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


def test_graph_records_operation_arguments_and_dict_outputs():
    layers = keras().layers
    x = keras().Input((3,), name="x")
    y = layers.Dense(3, name="dense")(x)
    shifted = y + 3.0  # a Keras operation (keras.ops.add), not a layer
    model = keras().Model({"x": x}, {"shifted": shifted, "dense": y})
    source = graph.keras_graph(keras(), model)
    assert [(i.name, i.shape) for i in source.inputs] == [("x", (None, 3))]
    add = source.nodes[-1]
    assert type(add.layer).__name__ == "Add" and add.args == (graph.TensorArg(0), 3.0)
    assert add.output_shapes == ((None, 3),)
    assert source.output_keys == ("shifted", "dense") and not source.output_sequence
    assert source.outputs == [add.outputs[0], source.nodes[0].outputs[0]]

