"""A thin helper for writing ONNX graphs: unique names, initializers and nodes in one place."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MICROSOFT = "com.microsoft"
# ONNX Runtime 1.31 reads IR version 10 and opset 21 everywhere it runs.
IR_VERSION = 10
OPSET = 21


class GraphBuilder:
    def __init__(self, name: str, compute_type: int = TensorProto.FLOAT) -> None:
        self.name = name
        # What matmuls, attention and the KV cache compute in (converter.targets).
        self.compute_type = compute_type
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._initializer_names: set[str] = set()
        # Values computed once and read by several blocks (e.g. block sums of a layer's input).
        self.memo: dict[tuple, str] = {}

    def input(self, name: str, element_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, element_type, shape))
        return name

    def output(self, name: str, element_type: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, element_type, shape))
        return name

    def constant(self, name: str, values: np.ndarray) -> str:
        """Adds an initializer once; later calls with the same name reuse it (tied weights)."""
        if name not in self._initializer_names:
            self._initializer_names.add(name)
            values = np.asarray(values)  # ascontiguousarray would turn a scalar into a 1-element vector
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(values) if values.ndim else values, name))
        return name

    def compute_constant(self, name: str, values: np.ndarray) -> str:
        """A float initializer stored in the compute type (scales, biases, rotary tables)."""
        return self.constant(name, np.asarray(values, dtype=helper.tensor_dtype_to_np_dtype(self.compute_type)))

    def to_compute(self, value: str) -> str:
        """A float32 value cast to the compute type (itself when that is float32)."""
        if self.compute_type == TensorProto.FLOAT:
            return value
        return self.op1("Cast", [value], f"{value}/to_compute", to=self.compute_type)

    def to_float32(self, value: str) -> str:
        """A compute-type value widened to float32 (itself when the graph computes in float32)."""
        if self.compute_type == TensorProto.FLOAT:
            return value
        return self.op1("Cast", [value], f"{value}/to_float32", to=TensorProto.FLOAT)

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, domain: str = "", **attributes) -> list[str]:
        """Adds a node named `name`; its outputs are `name/output_0` and so on."""
        output_names = [f"{name}/output_{index}" for index in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, output_names, name=name, domain=domain, **attributes))
        return output_names

    def op1(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attributes) -> str:
        return self.op(op_type, inputs, name, 1, domain, **attributes)[0]

    def expose(self, value: str, name: str, element_type: int, shape: list) -> str:
        """Makes an inner value a graph output under a fixed name."""
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/identity"))
        return self.output(name, element_type, shape)

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            ir_version=IR_VERSION,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MICROSOFT, 1)],
            producer_name="llm-service converter",
        )
        return model


FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
INT32 = TensorProto.INT32
INT64 = TensorProto.INT64
