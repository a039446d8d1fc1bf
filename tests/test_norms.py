"""LayerNorm / RMSNorm (plain and fused with the residual add) against float64 ground truth.

Every case checks the outputs and every gradient (x, residual, weight, bias) with random upstream
gradients on both returned tensors, under the house tolerance rule (kernels.testing.assert_close).
On the CPU the kernels run in Triton's interpreter: fp32 and fp16, few rows at the big widths.
With CUDA the widths run in bf16 (fp32 weights at the model's widths) and fp16/fp32 at one width;
the cases are chosen so that they share compiled kernels (every new dtype, width class or flag set
is a Triton compile of ~0.3 s): the GPU run stays under a minute.
"""
import pytest
import torch

import kernels
from kernels import norms, norms_bwd, reference
from kernels.testing import assert_close
from kernels.testing import call_norm as call
from spies import LaunchSpy

CUDA = torch.cuda.is_available()
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
HAS_BIAS = {"layer_norm": True, "add_layer_norm": True, "rms_norm": False, "add_rms_norm": False}

# (leading shape, width, dtype): widths 1 .. 65536, rows 1 and 1151; 20000 and 65536 go through the
# looped kernels. On the CPU each shape in one dtype (fp16 or fp32, alternating) to keep the
# interpreter's time down; on the GPU every width once, in bf16 (row counts cost no compile there:
# n_rows is not a specialized kernel argument).
CPU_SHAPES = [((1,), 1, "float32"), ((7,), 1, "float16"), ((1151,), 96, "float32"), ((1151,), 96, "float16"),
              ((3, 1), 1000, "float16"), ((1,), 3000, "float32"), ((2, 3), 3000, "float16"),
              ((2,), 8192, "float32"), ((3,), 20000, "float16"), ((2,), 65536, "float32"),
              ((1,), 65536, "float16")]
GPU_SHAPES = [((1151,), 1, "bfloat16"), ((1151,), 96, "bfloat16"), ((3, 384), 1000, "bfloat16"),
              ((1,), 3000, "bfloat16"), ((257,), 8192, "bfloat16"), ((3,), 20000, "bfloat16"),
              ((2,), 65536, "bfloat16")]
SHAPES = GPU_SHAPES if CUDA else CPU_SHAPES
# bf16 activations with fp32 weights (autocast): the model's widths and row counts on the GPU.
MIXED_SHAPES = [(4, 257, 768), (1151, 8192)] if CUDA else [(1151, 96)]
HALF = torch.bfloat16 if CUDA else torch.float16
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
W = 96  # the width of the small cases: shared by them so that the GPU compiles few kernels


def make_x(shape, dtype, device):
    """Non-zero mean and a wide spread: each row its own offset and scale."""
    x = torch.randn(shape, dtype=torch.float64)
    x = x * torch.exp(torch.randn(*shape[:-1], 1, dtype=torch.float64)) + 4 * torch.randn(*shape[:-1], 1,
                                                                                               dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def run(mod, op, inputs, grads, eps, cast=None):
    """Outputs and input gradients of one op; `cast` (a dtype) converts every input first."""
    leaves = [None if t is None else (t.to(cast) if cast else t).detach().requires_grad_() for t in inputs]
    outs = call(mod, op, *leaves, eps)
    used = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
    torch.autograd.backward([o for o, _ in used], [g.to(o.dtype) for o, g in used])
    return outs, [None if t is None else t.grad for t in leaves]


def check(op, shape, dtype, device, *, w_dtype=None, has_w=True, has_b=True, res_dtype=None,
          row_pad=0, eps=1e-5):
    """Compare ours and PyTorch-in-dtype against the float64 reference, outputs and all gradients."""
    n = shape[-1]
    if row_pad:  # rows strided inside a wider buffer: the kernels must not need a copy
        x = make_x((*shape[:-1], n + row_pad), dtype, device)[..., :n]
        assert not x.is_contiguous()
    else:
        x = make_x(shape, dtype, device)
    add = op.startswith("add_")
    r = make_x((*shape[:-1], n + row_pad), res_dtype or dtype, device)[..., :n] if add else None
    w = (1 + 0.5 * torch.randn(n, device=device)).to(w_dtype or dtype) if has_w else None
    b = torch.randn(n, device=device).to(w_dtype or dtype) if has_b and HAS_BIAS[op] else None
    inputs = (x, r, w, b)
    out_dtypes = [dtype] + ([torch.promote_types(dtype, res_dtype or dtype)] if add else [])
    grads = [torch.randn(shape, device=device, dtype=torch.float64).to(d) for d in out_dtypes]

    ours, ours_g = run(kernels, op, inputs, grads, eps)
    base, base_g = run(reference, op, inputs, grads, eps)
    truth, truth_g = run(reference, op, inputs, grads, eps, cast=torch.float64)
    for i, (o, bo, t) in enumerate(zip(ours, base, truth)):
        assert o.dtype == bo.dtype, f"output {i} dtype {o.dtype} != reference {bo.dtype}"
        assert_close(o, t, bo, name=f"{op} output {i}")
    for name, g, bg, tg, inp in zip(("dx", "dresidual", "dweight", "dbias"), ours_g, base_g, truth_g, inputs):
        if inp is None:
            continue
        assert g is not None and g.dtype == inp.dtype, f"{name}: {None if g is None else g.dtype}"
        assert_close(g, tg, bg, name=f"{op} {name}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, (*s[0], s[1]))) + "-" + s[2])
@pytest.mark.parametrize("op", OPS)
def test_widths_and_rows(op, shape, device):
    lead, n, dtype = shape
    check(op, (*lead, n), getattr(torch, dtype), device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_dtypes(op, dtype, device):
    check(op, (5, 37, W), dtype, device)


@pytest.mark.parametrize("shape", MIXED_SHAPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_fp32_weight_with_half_input(op, shape, device):
    check(op, shape, HALF, device, w_dtype=torch.float32)


@pytest.mark.parametrize("op", OPS)
def test_backward_prefetch_variant(op, device, monkeypatch):
    # The one-pass backward's PREFETCH switch (next row block loaded before this one is computed).
    default = norms_bwd.prefetch_for("rms" in op, op.startswith("add_"))
    monkeypatch.setattr(norms_bwd, "PREFETCH", not default)
    check(op, (1151, W), torch.float32, device)
    if not CUDA:  # several rows per block and a ragged last block (the interpreter runs 4 programs)
        check(op, (2, 5, 1000), torch.float32, device)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("n", [W, 3000, 20000])
def test_strided_rows(op, n, device):
    # Rows inside a wider buffer. On the GPU the padding keeps the row stride's divisibility by 16
    # what the width's is, so the kernels compiled for the contiguous bf16 widths serve (the stride
    # is still a runtime argument that differs from the width).
    if CUDA:
        check(op, (3, 2, n), torch.bfloat16, device, row_pad=16)
    else:
        check(op, (3, 2, n), torch.float32, device, row_pad=5)


@pytest.mark.parametrize("op", OPS)
def test_column_stride_is_copied(op, device):
    # A transposed last dim cannot be read as X + col: the launcher copies it explicitly.
    x = make_x((40, 3), torch.float32, device).t()
    r = make_x((40, 3), torch.float32, device).t() if op.startswith("add_") else None
    ours = call(kernels, op, x, r, None, None, 1e-5)
    base = call(reference, op, x, r, None, None, 1e-5)
    truth = call(reference, op, x.double(), None if r is None else r.double(), None, None, 1e-5)
    for o, bo, t in zip(ours, base, truth):
        assert_close(o, t, bo, name=op)


@pytest.mark.parametrize("op,has_w,has_b", [(op, w, b) for op in OPS for w, b in
                                             ((False, False), (True, False), (False, True))
                                             if HAS_BIAS[op] or not b])
def test_optional_weight_and_bias(op, has_w, has_b, device):
    check(op, (13, W), HALF, device, has_w=has_w, has_b=has_b)


@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_mixed_residual_dtype(op, device):
    # fp16 branch output added to an fp32 residual stream: the sum is fp32, the normed output fp16.
    check(op, (9, W), torch.float16, device, res_dtype=torch.float32)


@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_no_residual_returns_x(op, device):
    x = make_x((4, W), torch.float32, device)
    w, b = torch.randn(W, device=device), torch.randn(W, device=device)
    normed, summed = call(kernels, op, x, None, w, b, 1e-5)
    assert summed is x
    plain = call(kernels, op[4:], x, None, w, b, 1e-5)[0]
    assert torch.equal(normed, plain)


def test_only_sum_used(device):
    x, r = make_x((6, W), torch.float32, device).requires_grad_(), make_x((6, W), torch.float32, device)
    w = torch.randn(W, device=device, requires_grad=True)
    r.requires_grad_()
    _, summed = kernels.add_rms_norm(x, r, w)
    (3 * summed).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0)) and torch.equal(r.grad, x.grad)
    assert w.grad is None


def test_backward_is_deterministic(device):
    x = make_x((333, W), torch.float32, device).requires_grad_()
    w = torch.randn(W, device=device, requires_grad=True)
    b = torch.randn(W, device=device, requires_grad=True)
    dy = torch.randn(333, W, device=device)
    grads = [torch.autograd.grad(kernels.layer_norm(x, w, b), (x, w, b), dy) for _ in range(2)]
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


def test_empty_and_float64(device):
    x = torch.empty(0, 5, 16, device=device)
    assert kernels.layer_norm(x, torch.ones(16, device=device)).shape == x.shape
    x64 = make_x((3, 16), torch.float64, device)
    assert torch.equal(kernels.rms_norm(x64), reference.rms_norm(x64))


def test_no_graph_without_grad(device):
    # Nothing to differentiate (no_grad, or no input requiring grad): the launcher runs without autograd.
    x, w = make_x((5, W), torch.float32, device), torch.randn(W, device=device)
    with torch.no_grad():
        assert kernels.layer_norm(x.requires_grad_(), w).grad_fn is None
    y, s = kernels.add_rms_norm(x.detach(), x.detach(), w)
    assert y.grad_fn is None and s.grad_fn is None
    assert torch.equal(kernels.layer_norm(x, w), kernels.layer_norm(x, w.requires_grad_()).detach())


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("n", [W, 20000])  # 20000: the looped forward kernel
def test_no_grad_forward_same_bits(op, n, device):
    # Without autograd the forward neither allocates nor stores the statistics (HAS_STATS off): y and the
    # sum must be bitwise those of the forward that stores them for a backward.
    x, r = make_x((3, n), torch.float32, device), make_x((3, n), torch.float32, device)
    w, b = torch.randn(n, device=device), torch.randn(n, device=device)
    with torch.no_grad():
        plain = call(kernels, op, x, r, w, b)
    graphed = call(kernels, op, x, r, w.requires_grad_(), b.requires_grad_())
    assert plain[0].grad_fn is None and graphed[0].grad_fn is not None
    for got, want in zip(plain, graphed):
        assert torch.equal(got, want.detach())


def test_triton_path_executes(device, monkeypatch):
    # One forward launch; the backward is one main launch plus one second-stage launch for dw and db.
    assert all(kernels.IMPLEMENTATION[op] == "triton" for op in OPS)
    spies = {}
    for mod, name in ((norms, "_fwd_launch"), (norms_bwd, "_bwd_launch"), (norms_bwd, "_sum_launch")):
        spies[name] = LaunchSpy(getattr(mod, name))
        monkeypatch.setattr(mod, name, spies[name])
    x = make_x((8, W), torch.float32, device).requires_grad_()
    w = torch.ones(W, device=device, requires_grad=True)
    b = torch.zeros(W, device=device, requires_grad=True)
    y, s = kernels.add_layer_norm(x, torch.randn_like(x), w, b)
    (y.sum() + s.sum()).backward()
    assert [spy.launches for spy in spies.values()] == [1, 1, 1]
    assert w.grad is not None and b.grad is not None


@pytest.mark.parametrize("op", OPS)
def test_torch_ops_match_eager_path(op, device):
    # torch.compile goes through the ops kernels::norm_fwd / kernels::norm_bwd (NormFn calls them there);
    # eager calls skip the dispatcher. Same kernels: the same bits everywhere.
    add, is_rms = op.startswith("add_"), "rms" in op
    x = make_x((13, W), torch.float32, device).requires_grad_()
    r = make_x((13, W), torch.float32, device).requires_grad_() if add else None
    w = torch.randn(W, device=device, requires_grad=True)
    b = torch.randn(W, device=device, requires_grad=True) if HAS_BIAS[op] else None
    leaves = [t for t in (x, r, w, b) if t is not None]
    eager = call(kernels, op, x, r, w, b, 1e-5)
    grads = [torch.randn_like(o) for o in eager]
    expected = (*eager, *torch.autograd.grad(eager, leaves, grads))
    with torch.no_grad():
        y, s, stats = torch.ops.kernels.norm_fwd(x, r, w, b, 1e-5, is_rms)
        bwd_args = (grads[0], s if add else x, grads[1] if add else None, w, b, stats, is_rms)
        dx, dw, db = torch.ops.kernels.norm_bwd(*bwd_args)
    got = (y, s, dx, dx, dw, db) if add else (y, dx, dw, db)
    got = got if b is not None else got[:-1]
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        assert torch.equal(a, e)
    torch.library.opcheck(torch.ops.kernels.norm_fwd.default, (x.detach(), r if r is None else r.detach(),
                                                              w.detach(), b if b is None else b.detach(), 1e-5, is_rms),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.kernels.norm_bwd.default, bwd_args, test_utils=("test_schema", "test_faketensor"))


def test_bad_input(device):
    x = torch.randn(4, 8, device=device)
    with pytest.raises(TypeError, match="floating dtype"):
        kernels.layer_norm(torch.ones(4, 8, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="eps must be a positive"):
        kernels.rms_norm(x, None, eps=0.0)
    with pytest.raises(ValueError, match="eps must be a positive"):
        kernels.add_layer_norm(x, x, None, None, eps=-1e-5)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        kernels.layer_norm(x, torch.ones(7, device=device))
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        kernels.layer_norm(x, None, torch.ones(9, device=device))
    with pytest.raises(ValueError, match="residual must have x's shape"):
        kernels.add_rms_norm(x, torch.randn(4, 9, device=device))
    with pytest.raises(ValueError, match="one device"):
        kernels.rms_norm(x, torch.ones(8, device="meta"))
    with pytest.raises(ValueError, match="one device"):
        kernels.add_layer_norm(x, torch.randn(4, 8, device="meta"))


@pytest.mark.parametrize("op", OPS)
def test_compile_fullgraph(op, device):
    # torch.compile traces the public function through the custom ops (also on the CPU: they are
    # opaque to Inductor); outputs and gradients match the eager path bit for bit. No compile caches:
    # a cached graph can outlive a change of the ops' schemas.
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        _check_compiled(op, device)


def _check_compiled(op, device):
    dtype = torch.bfloat16 if CUDA else torch.float32
    x = make_x((4, 33, 768), dtype, device).requires_grad_()
    r = make_x((4, 33, 768), dtype, device).requires_grad_() if op.startswith("add_") else None
    w = torch.randn(768, device=device, requires_grad=True)
    b = torch.randn(768, device=device, requires_grad=True) if HAS_BIAS[op] else None
    leaves = [t for t in (x, r, w, b) if t is not None]
    grads = []
    for fn in (torch.compile(lambda *a: call(kernels, op, *a, 1e-5), fullgraph=True),
               lambda *a: call(kernels, op, *a, 1e-5)):
        outs = fn(x, r, w, b)
        grads.append((*outs, *torch.autograd.grad(sum(o.float().sum() for o in outs), leaves)))
    for c, e in zip(*grads):
        assert torch.equal(c, e)
