"""Read the IS-Net weights out of its ONNX export, as an ``ISNetDIS`` state dict.

The ONNX file (``gen4gen fetch-weights``) was exported in eval mode, so each convolution +
batch-norm pair of the network is one ``Conv`` node with folded weights, named after its
module (``/stage1/rebnconv1/conv_s1/Conv``). Mapping node names back to module paths gives a
state dict in which every batch norm is the identity. That lets the PyTorch backend run the
same weights offline (``gen4gen convert-isnet``), and lets the tests check the PyTorch network
against onnxruntime on real weights.

A small protobuf reader does the parsing (the ``onnx`` package is not a dependency); only
numpy is needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# TensorProto.DataType -> numpy
_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _packed_ints(wire: int, value) -> list[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims, dtype, name, raw, floats = [], 1, "", None, None
    for number, wire, value in _fields(buf):
        if number == 1:
            dims.extend(_packed_ints(wire, value))
        elif number == 2:
            dtype = value
        elif number == 8:
            name = value.decode()
        elif number == 9:
            raw = value
        elif number == 4 and wire == 2:
            floats = np.frombuffer(value, np.float32)
    if dtype not in _DTYPES:
        raise ValueError(f"initializer {name!r}: unsupported data type {dtype}")
    array = np.frombuffer(raw, _DTYPES[dtype]) if raw is not None else floats
    return name, np.asarray(array, np.float32).reshape(dims)


def read_onnx_convs(path: str | Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(module path, weight, bias) of every Conv node, in graph order."""
    data = Path(path).read_bytes()
    graph = next((v for n, w, v in _fields(data) if n == 7), None)
    if graph is None:
        raise ValueError(f"{path}: not an ONNX model (no graph)")
    nodes, initializers = [], {}
    for number, _, value in _fields(graph):
        if number == 1:
            node = {"in": [], "out": [], "op": ""}
            for n, _, v in _fields(value):
                if n == 1:
                    node["in"].append(v.decode())
                elif n == 2:
                    node["out"].append(v.decode())
                elif n == 4:
                    node["op"] = v.decode()
            nodes.append(node)
        elif number == 5:
            name, array = _tensor(value)
            initializers[name] = array
    convs = []
    for node in nodes:
        if node["op"] != "Conv":
            continue
        output = node["out"][0]  # "/stage1/rebnconv1/conv_s1/Conv_output_0"
        parts = [p for p in output.split("/") if p][:-1]
        if not parts:
            raise ValueError(f"{path}: cannot tell the module of Conv output {output!r}")
        weight = initializers[node["in"][1]]
        bias = initializers[node["in"][2]] if len(node["in"]) > 2 and node["in"][2] else None
        convs.append((".".join(parts), weight, bias))
    return convs


def isnet_state_dict_from_onnx(path: str | Path) -> dict[str, np.ndarray]:
    """An ``ISNetDIS`` state dict (numpy arrays): folded convolutions, identity batch norms."""
    state: dict[str, np.ndarray] = {}
    for module, weight, bias in read_onnx_convs(path):
        state[f"{module}.weight"] = weight
        state[f"{module}.bias"] = bias if bias is not None else np.zeros(weight.shape[0], np.float32)
        if module.endswith(".conv_s1"):
            bn = module[: -len(".conv_s1")] + ".bn_s1"
            channels = weight.shape[0]
            eps = 1e-5  # BatchNorm2d's default: var = 1 - eps makes it exactly the identity
            state[f"{bn}.weight"] = np.ones(channels, np.float32)
            state[f"{bn}.bias"] = np.zeros(channels, np.float32)
            state[f"{bn}.running_mean"] = np.zeros(channels, np.float32)
            state[f"{bn}.running_var"] = np.full(channels, 1.0 - eps, np.float32)
            state[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
    return state


def convert_onnx_to_checkpoint(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Write an ``isnet_torch`` checkpoint (a torch state dict) from the ONNX export."""
    import torch

    from gen4gen.io import atomic_write_bytes

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in isnet_state_dict_from_onnx(onnx_path).items()}
    from .isnet_arch import ISNetDIS

    ISNetDIS().load_state_dict(state, strict=True)  # fails loudly if the export is not IS-Net
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(out_path, buffer.getvalue())
