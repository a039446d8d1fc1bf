"""The kernels' torch operators (`torch.ops.kernels.*`), what torch.compile traces and Inductor calls.

Each op is a schema, one implementation for every device and a fake (shapes only), registered through
torch.library's low-level API. torch.library.custom_op would wrap every call in Python machinery of
its own (argument checks, a device dispatch, the registered autograd's redispatch): measured on our
CPU, 18 us of host time per kernels::norm_fwd call against 10 us here, for 5 us of launch work
(tools/host_profile_cpu.py's op rows). A compiled training step calls these ops about a hundred
times, and on a GPU host that Python is where the GPU waits (bench/RESULTS.md).

The ops carry no autograd of their own: the public functions' autograd.Functions call them under
torch.compile, and Dynamo traces those (forward and backward) into the graph, so AOTAutograd sees a
forward op and a backward op, as it would with an autograd formula registered on the op.
"""
import torch

LIBRARY = torch.library.Library("kernels", "FRAGMENT")


def define(schema, impl, fake):
    """Define kernels::<name> from its schema "<name>(...) -> ..." with impl on every device and its fake;
    returns the op's overload (torch.ops.kernels.<name>.default)."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"kernels::{name}", fake, lib=LIBRARY)
    return getattr(torch.ops.kernels, name).default
