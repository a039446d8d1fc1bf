"""Triton ffn / linear_act against the float64 reference: output and every gradient, every activation.

On the CPU the kernels run in Triton's interpreter with fp32 and fp16 (its bf16 tl.dot is wrong);
with CUDA the cases run in bf16 (plus fp16/fp32 for two activations), larger shapes, autocast and
torch.compile, with autotuning off (KERNELS_AUTOTUNE=0) so the GPU run compiles few kernels.
The tolerance is the plain house rule: 2 x PyTorch's own error in the same dtype + floor.
"""
import importlib
import zlib

import pytest
import torch

import kernels
from kernels import matmul, matmul_persistent, matmul_tl, reference
from kernels._checks import ACTIVATIONS, GATED_ACTIVATIONS
from kernels.testing import assert_close

ffn_module = importlib.import_module("kernels.ffn")  # kernels.ffn is the function, re-exported
CUDA = torch.cuda.is_available()
# (dtype, activation) cases of the float64 comparisons. CPU (interpreter): fp32 and fp16, every
# activation. GPU: bf16 every activation, fp16 and fp32 for relu2 and swiglu (each case compiles its
# own kernels; the CPU run covers the rest of fp16/fp32 with the same code).
if CUDA:
    CASES = ([(torch.bfloat16, a) for a in ACTIVATIONS]
             + [(d, a) for d in (torch.float16, torch.float32) for a in ("relu2", "swiglu")])
else:
    CASES = [(d, a) for d in (torch.float32, torch.float16) for a in ACTIVATIONS]
CASE_IDS = [f"{str(d)[6:]}-{a}" for d, a in CASES]


def _params(M, D, H, D_out, activation, bias, device, lead=None):
    """float64 leaf tensors x (M, D), w_in, b_in, w_out, b_out with O(1) pre-activations."""
    n_in = 2 * H if activation in GATED_ACTIVATIONS else H
    shape = (M, D) if lead is None else (*lead, D)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    w_in = torch.randn(n_in, D, dtype=torch.float64, device=device) / D ** 0.5
    w_out = torch.randn(D_out, H, dtype=torch.float64, device=device) / H ** 0.5
    b_in = torch.randn(n_in, dtype=torch.float64, device=device) * 0.5 if bias else None
    b_out = torch.randn(D_out, dtype=torch.float64, device=device) * 0.5 if bias else None
    return [x, w_in, b_in, w_out, b_out]


def _run(fn, tensors, dtype, grad_out, activation):
    """fn's output and the gradients of its tensor arguments, computed in dtype."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]
    out = fn(*leaves, activation)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out.to(dtype))
    return out, grads


NAMES = ("x", "w_in", "b_in", "w_out", "b_out")


@pytest.fixture(autouse=True)
def _fixed_configs(monkeypatch):
    # One config per shape class, no tuning runs: the GPU tests compile far fewer kernels. The
    # autotuned path is exercised by tools/gpu_ffn.py and the benchmark suite.
    monkeypatch.setenv("KERNELS_AUTOTUNE", "0")
    # The tl kernels here: the Gluon kernels that take M > SMALL_M on Hopper have their own files
    # (tests/test_matmul_gated_gluon.py, test_matmul_nongated_gluon.py), which also run kernels.ffn through them.
    for flag in ("GLUON_GATED_FWD", "GLUON_PLAIN_FWD", "GLUON_BWD"):
        monkeypatch.setattr(matmul, flag, False)


@pytest.fixture(autouse=True)
def _stable_seed(request):
    # Python salts str hashes per process, so conftest's hash(nodeid) seed changes between runs;
    # crc32 keeps every case's inputs the same from run to run.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _check(fn_ours, fn_ref, tensors, dtype, activation, names=NAMES):
    leaves64 = [None if t is None else t.detach().requires_grad_() for t in tensors]
    truth = fn_ref(*leaves64, activation)
    grad_out = torch.randn_like(truth)
    truth_grads = torch.autograd.grad(truth, [t for t in leaves64 if t is not None], grad_out)
    ours, ours_grads = _run(fn_ours, tensors, dtype, grad_out, activation)
    base, base_grads = _run(fn_ref, tensors, dtype, grad_out, activation)
    assert ours.dtype == dtype
    assert_close(ours, truth, base, name=f"{activation} output")
    present = [n for n, t in zip(names, tensors) if t is not None]
    for name, g, t, b in zip(present, ours_grads, truth_grads, base_grads):
        assert_close(g, t, b, name=f"{activation} d{name}")


@pytest.mark.parametrize("M", [1, 17, 1000])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, activation", CASES, ids=CASE_IDS)
def test_ffn_matches_float64(dtype, activation, M, bias, device):
    _check(kernels.ffn, reference.ffn, _params(M, 24, 40, 32, activation, bias, device), dtype, activation)


@pytest.mark.parametrize("M", [1, 17, 1000])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, activation", CASES, ids=CASE_IDS)
def test_linear_act_matches_float64(dtype, activation, M, bias, device):
    x, w, b = _params(M, 24, 40, 8, activation, bias, device)[:3]

    def ours(x, w, b, act):
        return kernels.linear_act(x, w, b, act)

    def ref(x, w, b, act):
        return reference.linear_act(x, w, b, act)
    _check(ours, ref, [x, w, b], dtype, activation, names=("x", "w", "b"))


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_leading_dims_strides_and_even_k(activation, device):
    # x (3, 7, 64) as a strided view of a wider tensor: K = 64 takes the unmasked-K loop, the row
    # stride is not K, and the leading shape is kept.
    wide = _params(3, 128, 100, 40, activation, True, device, lead=(3, 7))  # H > BLOCK_N: 2 column tiles
    x = wide[0][..., :64]
    assert not x.is_contiguous()
    tensors = [x, wide[1][:, :64].contiguous(), wide[2], wide[3], wide[4]]
    _check(kernels.ffn, reference.ffn, tensors, torch.float32, activation)
    w_t = tensors[1].t().contiguous().t()  # a column-major weight view
    out = kernels.linear_act(x.float(), w_t.float(), tensors[2].float(), activation)
    assert out.shape == (3, 7, w_t.shape[0] // (2 if activation in GATED_ACTIVATIONS else 1))
    assert_close(out, reference.linear_act(x, w_t, tensors[2], activation), None, floor=1e-4)


def test_tma_and_pointer_paths(device):
    # 16-bit, 16-byte-aligned operands load through TMA descriptors; a misaligned view (base pointer
    # one element off) or fp32 takes the plain-pointer loop. Both must give the same answer.
    x, w_in, b_in, w_out, b_out = _params(33, 24, 40, 32, "swiglu", True, device)
    base = torch.randn(33, 25, dtype=torch.float16, device=device)
    x_misaligned = base[:, 1:]
    x_misaligned.copy_(x)
    args = dict(TMA=True, stride_xm=x_misaligned.stride(0), stride_xk=1, W=w_in.half(), stride_wn=24,
                stride_wk=1)
    assert not matmul_tl._fwd_tma(dict(args, X=x_misaligned))
    assert matmul_tl._fwd_tma(dict(args, X=x.half().contiguous(), stride_xm=24))
    assert not matmul_tl._fwd_tma(dict(args, X=x.float().contiguous(), stride_xm=24, W=w_in.float()))
    params16 = [t.half() for t in (w_in, b_in, w_out, b_out)]
    y_tma = kernels.ffn(x.half(), *params16, "swiglu")
    y_ptr = kernels.ffn(x_misaligned, *params16, "swiglu")
    torch.testing.assert_close(y_ptr, y_tma, rtol=1e-3, atol=1e-3)
    assert_close(y_ptr, reference.ffn(x, w_in, b_in, w_out, b_out, "swiglu"),
                 reference.ffn(x.half(), *params16, "swiglu"), name="pointer-path output")


def _variant_case(activation, device):
    """(tensors, upstream gradient, dtype) for comparing two kernel variants: an odd M above SMALL_M on the
    GPU (the large-tile and persistent range; the interpreter takes any M) and an edge tile in N."""
    M = matmul.SMALL_M + 77 if CUDA else 77
    tensors = _params(M, 24, 40, 32, activation, True, device)
    grad_out = torch.randn(M, 32, dtype=torch.float64, device=device)
    return tensors, grad_out, torch.bfloat16 if CUDA else torch.float16


def _assert_same_grads(grads, expected, dtype):
    """Bit-identical gradients of two kernel variants with the same roundings (ffn's NAMES order)."""
    for name, g, e in zip(NAMES, grads, expected):
        if name == "b_in":  # fp32 atomic sums in either order, then rounded: at most an ulp apart
            torch.testing.assert_close(g.float(), e.float(), rtol=torch.finfo(dtype).eps, atol=0)
        else:
            torch.testing.assert_close(g, e, rtol=0, atol=0, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("activation, gated_fwd", [("gelu", False), ("swiglu", False), ("geglu", True)])
def test_persistent_and_per_tile_kernels_agree(activation, gated_fwd, device, monkeypatch):
    # kernels/matmul_persistent.py (non-gated forward, gated backward; with PERSISTENT_GATED_FWD the gated
    # forward too) against the per-tile kernels: same roundings, so the same numbers, and the house rule
    # against float64.
    monkeypatch.setattr(matmul, "PERSISTENT_GATED_FWD", gated_fwd)
    tensors, grad_out, dtype = _variant_case(activation, device)
    runs = []
    for persistent in (True, False):
        monkeypatch.setattr(matmul, "PERSISTENT", persistent)
        runs.append(_run(kernels.ffn, tensors, dtype, grad_out, activation))
    (out_p, grads_p), (out_t, grads_t) = runs
    torch.testing.assert_close(out_p, out_t, rtol=0, atol=0)
    _assert_same_grads(grads_p, grads_t, dtype)
    monkeypatch.setattr(matmul, "PERSISTENT", True)
    _check(kernels.ffn, reference.ffn, tensors, dtype, activation)


@pytest.mark.parametrize("activation", ["relu2", "geglu"])
def test_backward_epilogue_loaded_first(activation, device, monkeypatch):
    # EPI_FIRST (a backward config option) only moves the epilogue's loads before the main loop: the
    # gradients must be bit-identical to the plain order.
    first = matmul._BWD_CONFIGS[0]
    epi_first = matmul._bwd_config(first, epi_first=True)
    tensors, grad_out, dtype = _variant_case(activation, device)
    runs = []
    for config in (first, epi_first):
        monkeypatch.setattr(matmul, "_fixed_config",
                            lambda small, of, c=config: c if of is matmul._BWD_CONFIGS else of[0])
        runs.append(_run(kernels.ffn, tensors, dtype, grad_out, activation))
    _assert_same_grads(runs[1][1], runs[0][1], dtype)
    _check(kernels.ffn, reference.ffn, tensors, dtype, activation)  # still under the forced EPI_FIRST config


@pytest.mark.skipif(CUDA, reason="on the GPU it tunes five to eight configs per kernel; tools/gpu_ffn.py and the "
                                   "benchmark suite run the autotuned path there")
@pytest.mark.parametrize("activation, persistent", [("relu2", False), ("relu2", True), ("swiglu", True)])
def test_autotuned_launch_path(activation, persistent, device, monkeypatch):
    # M > SMALL_M with autotuning on goes through triton.autotune (one config in the interpreter) the
    # first time its key is seen; the second call launches the picked config directly. With PERSISTENT
    # the non-gated forward and the gated backward are the persistent kernels, remembered in their module.
    monkeypatch.setenv("KERNELS_AUTOTUNE", "1")
    monkeypatch.setattr(matmul, "PERSISTENT", persistent)
    monkeypatch.setattr(matmul, "_PICKED", {})
    monkeypatch.setattr(matmul_persistent, "_PICKED", {})
    M = matmul.SMALL_M + 77
    tensors = _params(M, 24, 40, 32, activation, True, device)
    _check(kernels.ffn, reference.ffn, tensors, torch.float16, activation)
    fwd = matmul_persistent._tuned if persistent and activation == "relu2" else matmul._linear_act_fwd_tuned
    bwd = matmul_persistent._bwd_tuned if persistent and activation == "swiglu" else matmul._act_bwd_tuned
    picked = {key[0] for key in (*matmul._PICKED, *matmul_persistent._PICKED)}
    assert picked == {fwd, bwd}
    through_autotuner = []
    for tuned in (fwd, bwd):
        monkeypatch.setattr(tuned, "run", lambda *a, _run=tuned.run, **k: through_autotuner.append(1) or _run(*a, **k))
    _check(kernels.ffn, reference.ffn, tensors, torch.float16, activation)
    assert through_autotuner == []


def test_mixed_dtypes_cast_weights_to_x(device):
    # fp16 x with fp32 weights: computed in fp16 like autocast would, gradients in each leaf's dtype.
    x, w_in, b_in, w_out, b_out = _params(17, 24, 40, 32, "silu", True, device)
    x16 = x.half().requires_grad_()
    ws = [t.float().requires_grad_() for t in (w_in, b_in, w_out, b_out)]
    y = kernels.ffn(x16, *ws, "silu")
    assert y.dtype == torch.float16
    y.sum().backward()
    assert x16.grad.dtype == torch.float16 and all(t.grad.dtype == torch.float32 for t in ws)
    truth = reference.ffn(x, w_in, b_in, w_out, b_out, "silu")
    assert_close(y, truth, reference.ffn(x16, *[t.half() for t in ws], "silu"), name="mixed output")


def test_no_grad_and_empty_rows(device):
    tensors = [t.float() for t in _params(5, 24, 40, 32, "geglu", True, device)]
    with torch.no_grad():
        y = kernels.ffn(*tensors, "geglu")
    assert_close(y, reference.ffn(*[t.double() for t in tensors], "geglu"), None, floor=1e-4)
    empty = kernels.ffn(tensors[0][:0], *tensors[1:], "geglu")
    assert empty.shape == (0, 32)


def test_triton_path_executes(device, monkeypatch):
    calls = []
    for name in ("linear_act_fwd", "act_bwd"):
        original = getattr(ffn_module, name)
        monkeypatch.setattr(ffn_module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    assert kernels.IMPLEMENTATION["ffn"] == "triton" and kernels.IMPLEMENTATION["linear_act"] == "triton"
    tensors = [t.float().requires_grad_() for t in _params(3, 24, 40, 32, "relu", True, device)]
    kernels.ffn(*tensors, "relu").sum().backward()
    kernels.linear_act(*tensors[:3], "relu").sum().backward()
    assert calls == ["linear_act_fwd", "act_bwd", "linear_act_fwd", "act_bwd"]


def test_bad_input_raises(device):
    x, w_in, b_in, w_out, b_out = [t.float() for t in _params(4, 24, 40, 32, "gelu", True, device)]
    with pytest.raises(ValueError, match="must equal w_in.shape"):
        kernels.ffn(x[:, :16], w_in, b_in, w_out, b_out, "gelu")
    with pytest.raises(ValueError, match="hidden width"):
        kernels.ffn(x, w_in, b_in, w_out[:, :8], b_out, "gelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        kernels.ffn(x, w_in, b_in, w_out, b_out, "tanh")
    with pytest.raises(ValueError, match="activation must be one of"):
        kernels.linear_act(x, w_in, b_in, "swish")
    with pytest.raises(TypeError, match="floating dtype"):
        kernels.linear_act(x.to(torch.int32), w_in, b_in, "gelu")
    with pytest.raises(TypeError, match="float64"):
        kernels.linear_act(x.double(), w_in.double(), None, "gelu")
    with pytest.raises(ValueError, match="row count must be even"):
        kernels.linear_act(x, w_in[:39], None, "swiglu")
    with pytest.raises(ValueError, match="b must have shape"):
        kernels.linear_act(x, w_in, b_in[:3], "gelu")
    with pytest.raises(ValueError, match="one device"):
        kernels.ffn(x, w_in, b_in, w_out.to("meta"), b_out, "gelu")
    with pytest.raises(ValueError, match="Triton kernels here take"):
        kernels.linear_act(x.to("meta"), w_in.to("meta"), None, "gelu")


@pytest.mark.parametrize("activation", ["gelu", "swiglu", "relu"])
def test_custom_ops_trace_fullgraph(activation, device):
    # Dynamo + fake tensors + registered autograd, without Inductor (which cannot build these on the CPU).
    tensors = [t.float().requires_grad_() for t in _params(17, 24, 40, 32, activation, True, device)]
    compiled = torch.compile(kernels.ffn, fullgraph=True, backend="aot_eager")
    y = compiled(*tensors, activation)
    grads = torch.autograd.grad(y.sum(), tensors)
    y_eager = kernels.ffn(*tensors, activation)
    torch.testing.assert_close(y, y_eager)
    for g, e in zip(grads, torch.autograd.grad(y_eager.sum(), tensors)):
        torch.testing.assert_close(g, e)
    la = torch.compile(kernels.linear_act, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(la(*tensors[:3], activation), kernels.linear_act(*tensors[:3], activation))


@pytest.mark.parametrize("activation", ["gelu", "swiglu", "relu", "relu2"])
def test_eager_grads_equal_the_custom_ops(activation, device):
    """The autograd.Functions return db_in in fp32 and leave its cast to the engine (kernels/ffn.py): the
    gradients are bitwise the custom ops' (which cast it themselves), in the inputs' dtype. bf16 as the GPU
    suite: the input dtype differs from the fp32 sums."""
    x, w_in, b_in, w_out, b_out = (t.to(torch.bfloat16).requires_grad_()
                                   for t in _params(17, 24, 40, 32, activation, True, device))
    g = torch.randn(17, 32, device=device).to(torch.bfloat16)
    grads = torch.autograd.grad(kernels.ffn(x, w_in, b_in, w_out, b_out, activation), [x, w_in, b_in, w_out, b_out], g)
    with torch.no_grad():
        _, pre, a = torch.ops.kernels.ffn_fwd(x, w_in, b_in, w_out, b_out, activation, True)
        expected = torch.ops.kernels.ffn_bwd(g, x, w_in, w_out, pre, a, activation, True, True)
    for name, ours, theirs in zip(NAMES, grads, expected):
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs), name
    grads = torch.autograd.grad(kernels.linear_act(x, w_in, b_in, activation), [x, w_in, b_in], a.new_ones(
        17, w_out.shape[1]))
    with torch.no_grad():
        out, pre = torch.ops.kernels.linear_act_fwd(x, w_in, b_in, activation, True)
        source = out if activation in ffn_module.FROM_OUTPUT else pre  # what the backward takes act' from
        expected = torch.ops.kernels.linear_act_bwd(a.new_ones(17, w_out.shape[1]), x, w_in, source, activation, True)
    for name, ours, theirs in zip(NAMES, grads, expected):
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs), name


@pytest.mark.parametrize("activation", ["relu", "relu2", "gelu"])
def test_relu_saves_its_output_not_a_pre_activation(activation, device):
    """relu's and relu2's backward reads act' off their output (kernels/matmul.py, FROM_OUTPUT): ffn saves one (M, H)
    tensor, the activation a, where gelu saves two (pre for act', a for dw_out); linear_act saves its output for
    them and the pre-activation (another tensor) otherwise. The gradients are checked against float64 above."""
    from_output = activation in ("relu", "relu2")
    tensors = [t.float().requires_grad_() for t in _params(17, 24, 40, 32, activation, True, device)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kernels.ffn(*tensors, activation)
        hidden = [t for t in saved if tuple(t.shape) == (17, 40)]
        assert len(hidden) == (1 if from_output else 2)
        saved.clear()
        out = kernels.linear_act(*tensors[:3], activation)
        hidden = [t for t in saved if tuple(t.shape) == (17, 40)]
        assert len(hidden) == 1 and (hidden[0].data_ptr() == out.data_ptr()) == from_output
    with torch.no_grad():  # and its forward writes no pre-activation at all
        assert torch.ops.kernels.ffn_fwd(*tensors, activation, True)[1].numel() == (0 if from_output else 680)


def test_backward_without_saved_tensors_is_a_clear_error(device):
    """The custom ops' forward run with save_pre False keeps nothing for act': a backward through it says so."""
    tensors = [t.float() for t in _params(5, 24, 40, 32, "relu", True, device)]
    for activation in ("relu", "gelu"):
        _, pre, a = torch.ops.kernels.ffn_fwd(*tensors, activation, False)
        ctx = type("Ctx", (), {"saved_tensors": (tensors[0], tensors[1], tensors[3], pre, a),
                               "activation": activation, "has_b_in": True, "has_b_out": True})()
        with pytest.raises(RuntimeError, match="without saving"):
            ffn_module.FFNFn.backward(ctx, torch.ones(5, 32, device=device))


# ---- GPU only ------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA: bf16 tl.dot is wrong in the interpreter; "
                                          "torch.compile through the ops cannot run on the CPU")


@gpu
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_bf16_larger_shapes(activation):
    # M > matmul.SMALL_M: the large-tile configs (fixed here, autotuned outside the tests).
    M = 4099
    tensors = _params(M, 768, 1000, 768, activation, True, "cuda")
    _check(kernels.ffn, reference.ffn, tensors, torch.bfloat16, activation)


def _tile_configs():
    """Every large-tile config of the autotune lists, with the activations whose kernels use it."""
    cases = []
    for name, activations in (("_CONFIGS", ["gelu"]), ("_GATED_CONFIGS", ["swiglu"]),
                              ("_BWD_CONFIGS", ["gelu", "swiglu"])):
        for c in getattr(matmul, name):
            for activation in activations:
                cases.append(pytest.param(name, c, activation,
                                          id=f"{name}-{activation}-{c.kwargs}-w{c.num_warps}s{c.num_stages}"))
    return cases


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("configs_name, config, activation", _tile_configs() if CUDA else [])
def test_every_tile_config(configs_name, config, activation, dtype, monkeypatch):
    # The autotuner may pick any of these on a user's GPU; each must be right in both 16-bit dtypes.
    # The config is forced on the kernels of its list; the others keep their first.
    configs = getattr(matmul, configs_name)
    monkeypatch.setattr(matmul, "PERSISTENT", False)  # the per-tile kernels here; the persistent ones below
    monkeypatch.setattr(matmul, "_fixed_config", lambda small, of: config if of is configs else of[0])
    tensors = _params(matmul.SMALL_M + 77, 256, 520, 264, activation, True, "cuda")
    _check(kernels.ffn, reference.ffn, tensors, dtype, activation)


def _persistent_configs():
    # gelu: the non-gated forward's list; swiglu: the gated backward's; geglu: the gated forward's (opt-in)
    return [pytest.param(c, activation, id=f"{activation}-{c.kwargs}-w{c.num_warps}s{c.num_stages}")
            for name, activation in (("_CONFIGS", "gelu"), ("_BWD_CONFIGS", "swiglu"), ("_GATED_CONFIGS", "geglu"))
            for c in getattr(matmul_persistent, name)]


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("config, activation", _persistent_configs() if CUDA else [])
def test_every_persistent_config(config, activation, dtype, monkeypatch):
    # The persistent kernels (matmul.PERSISTENT, on by default) with each config of their autotune lists.
    monkeypatch.setattr(matmul, "PERSISTENT", True)
    monkeypatch.setattr(matmul, "PERSISTENT_GATED_FWD", True)
    monkeypatch.setattr(matmul_persistent, "_fixed_config", lambda configs: config if config in configs else configs[0])
    tensors = _params(matmul.SMALL_M + 77, 256, 520, 264, activation, True, "cuda")
    _check(kernels.ffn, reference.ffn, tensors, dtype, activation)


@gpu
def test_autocast_uses_autocast_dtype():
    tensors = [t.float() for t in _params(300, 256, 512, 256, "swiglu", True, "cuda")]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = kernels.ffn(*tensors, "swiglu")
        base = reference.ffn(*tensors, "swiglu")
    assert y.dtype == torch.bfloat16
    assert_close(y, reference.ffn(*[t.double() for t in tensors], "swiglu"), base)


@gpu
# gelu's trace is covered by the CPU aot_eager test; relu saves its output (FROM_OUTPUT) through Inductor too
@pytest.mark.parametrize("activation", ["swiglu", "relu"])
def test_torch_compile_fullgraph(activation):
    tensors = _params(129, 256, 512, 256, activation, True, "cuda")
    ours, ours_grads = _run(kernels.ffn, tensors, torch.bfloat16, torch.ones(129, 256, device="cuda"),
                            activation)
    compiled = torch.compile(kernels.ffn, fullgraph=True)
    out, grads = _run(compiled, tensors, torch.bfloat16, torch.ones(129, 256, device="cuda"), activation)
    torch.testing.assert_close(out, ours, rtol=0, atol=0)
    for g, o in zip(grads, ours_grads):
        torch.testing.assert_close(g, o, rtol=1e-2, atol=1e-2)  # db_in sums with atomics: order varies
    la = torch.compile(kernels.linear_act, fullgraph=True)
    x, w = [t.to(torch.bfloat16) for t in tensors[:2]]
    torch.testing.assert_close(la(x, w, None, activation), kernels.linear_act(x, w, None, activation))


def test_too_many_rows_for_int32_indexing_is_a_clear_error(device):
    # 2^24 rows x width 256 >= 2^31: a zero-stride view, so nothing that large is allocated.
    x = torch.randn(1, 1, 8, device=device, dtype=torch.float16).expand(2**12, 2**12, 8)
    w = torch.randn(256, 8, device=device, dtype=torch.float16)
    with pytest.raises(ValueError, match="int32 indexing"):
        kernels.linear_act(x, w, None, "relu")
    with pytest.raises(ValueError, match="int32 indexing"):
        kernels.ffn(x, w, None, torch.randn(8, 256, device=device, dtype=torch.float16), None, "gelu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_column_sums_for_db_out(dtype, device):
    # db_out by a matrix-vector product with a ones vector past SMALL_M rows (fp32, and up to SMALL_M rows: torch's
    # sum): several row counts (a shorter call after a longer one, and back), the same bits on every call, and the
    # error of torch's own dy.sum(0) in that dtype (nothing kept between calls: tests/test_kept_tensors.py).
    big = ffn_module.SMALL_M + 77
    for M in (big, big + 8, big, 17, 1):
        t = (torch.randn(M, 24, dtype=torch.float64, device=device) + 0.5).to(dtype)
        ours = ffn_module._column_sums(t)
        assert ours.dtype == dtype and ours.shape == (24,)
        assert_close(ours, t.double().sum(0), t.sum(0), name=f"column sums of {M} rows")
        assert torch.equal(ffn_module._column_sums(t), ours)
