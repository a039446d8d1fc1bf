"""No kernel module holds on to a tensor between calls.

torch.compile(mode="reduce-overhead") runs a graph once eagerly with its allocations going to the CUDA-graph
memory pool, then refuses the graph if any tensor from that run is still alive and not one of its outputs
("tensor(s) in the cudagraph pool not tracked as outputs"). A cache of tensors in our modules (a ones vector,
a workspace) is such a tensor. This runs every kernel family forward and backward (fp16 where the interpreter
takes it, the FFN past SMALL_M rows for its db_out path) and walks what the kernels package's modules
reference for tensors.
"""
import sys

import torch

import kernels


def _tensors_held(obj, path, seen, found, depth=0):
    if id(obj) in seen or depth > 8:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        found.append(f"{path}: {tuple(obj.shape)} {obj.dtype}")
    elif isinstance(obj, dict):
        for key, value in list(obj.items()):
            _tensors_held(key, f"{path}[key]", seen, found, depth + 1)
            _tensors_held(value, f"{path}[{str(key)[:60]}]", seen, found, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            _tensors_held(value, f"{path}[{i}]", seen, found, depth + 1)
    elif type(obj).__module__.startswith("kernels"):  # our objects (launch plans, ...): their attributes
        attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        attrs.update({s: getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s)})
        for name, value in attrs.items():
            _tensors_held(value, f"{path}.{name}", seen, found, depth + 1)


def test_no_module_keeps_a_tensor(device):
    dtype = torch.float16
    rows = sys.modules["kernels.ffn"].SMALL_M + 77  # past it, db_out is a matrix-vector product with ones

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype).requires_grad_()

    x = leaf(rows, 16)
    y = kernels.ffn(x, leaf(32, 16, scale=0.1), leaf(32), leaf(16, 32, scale=0.1), leaf(16), "gelu")
    y = kernels.add_layer_norm(y, x, leaf(16), leaf(16))[0]
    y = kernels.rms_norm(y, leaf(16))
    y.float().sum().backward()
    q, k, v = (leaf(1, 2, 17, 16, scale=0.5) for _ in range(3))
    kernels.attention(q, k, v).float().sum().backward()

    found, seen = [], set()
    for name, module in list(sys.modules.items()):
        if name == "kernels" or name.startswith("kernels."):
            for attr, value in list(vars(module).items()):
                if not attr.startswith("__"):
                    _tensors_held(value, f"{name}.{attr}", seen, found)
    assert not found, f"tensors kept by the kernels modules between calls: {found}"
