"""The persistent Gluon forward (kernels/attention_gluon_persistent.py) against float64 on a Hopper GPU: every
block shape, causal or not, GQA, T 128 (tiles of one key block back to back) to 1024, grids that give
programs odd tile counts, none or one pair, fused-QKV views, bf16 and fp16; and the dispatch's candidate.
The walk itself is checked on the CPU by tools/fwd_persistent_model.py. A ring bug would hang: run this file
under `timeout`.
"""
import math

import pytest
import torch

from test_attention_gluon import HOPPER, _check, _fused_qkv, _inputs

hopper_only = pytest.mark.skipif(not HOPPER, reason="the Gluon forward needs a Hopper GPU")
persistent = pytest.importorskip("kernels.attention_gluon_persistent")
gluon_mod = pytest.importorskip("kernels.attention_gluon")


@hopper_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, block_m, block_n", [(64, 64, 128), (64, 64, 64), (128, 64, 64), (128, 128, 128)])
@pytest.mark.parametrize("B, H, H_kv, T", [(1, 2, 2, 128), (2, 4, 2, 1024), (1, 3, 1, 384), (2, 3, 3, 512)])
def test_persistent_forward_matches_float64(B, H, H_kv, T, D, block_m, block_n, causal, dtype):
    if T % (2 * block_m):
        pytest.skip("query blocks go in pairs: T a multiple of 2 x block_m (the error: test below)")
    q, k, v = _inputs(B, H, H_kv, T, D, dtype, seed=T + D + 2)
    out, lse = persistent.attention_fwd_persistent(q, k, v, causal, 1 / math.sqrt(D), block_m, block_n)
    _check(q, k, v, causal, out, lse)


@hopper_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, block_m, block_n", [(64, 64, 128), (128, 64, 64), (128, 128, 128)])
@pytest.mark.parametrize("T", [128, 384, 1024])
@pytest.mark.parametrize("programs", [1, 3, 7, 13, "pairs - 1", "pairs + 5"])
def test_any_grid_covers_every_tile_once(programs, T, D, block_m, block_n, causal):
    """Grids of 1 to more programs than pairs (the last ones with no tile): odd and even tile counts per
    program, the K and V rings carried across tiles of any length."""
    if T % (2 * block_m):
        pytest.skip("query blocks go in pairs")
    B, H, H_kv = 2, 3, 1
    n_pairs = B * H * T // (2 * block_m)
    if isinstance(programs, str):
        programs = n_pairs - 1 if programs == "pairs - 1" else n_pairs + 5
    q, k, v = _inputs(B, H, H_kv, T, D, torch.bfloat16, seed=programs + T)
    out, lse = persistent.attention_fwd_persistent(q, k, v, causal, 1 / math.sqrt(D), block_m, block_n,
                                                   programs=programs)
    _check(q, k, v, causal, out, lse)


@hopper_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D, block_n", [(64, 128), (128, 64)])
@pytest.mark.parametrize("programs", [None, 5])
def test_persistent_takes_fused_qkv_views(programs, D, block_n, causal):
    q, k, v = _fused_qkv(2, 6, 2, 256, D, dtype="float16", device="cuda", seed=D + 7)
    assert not q.is_contiguous() and gluon_mod.usable(q, k, v)
    out, lse = persistent.attention_fwd_persistent(q, k, v, causal, 1 / math.sqrt(D), 64, block_n,
                                                   programs=programs)
    _check(q, k, v, causal, out, lse)


def test_the_persistent_candidate_is_timed_at_d128_only():
    assert [c for c in gluon_mod.CONFIGS[128] if c[0] == "persistent"] == [("persistent", 64, 64)]
    assert not [c for c in gluon_mod.CONFIGS[64] if c[0] == "persistent"]  # behind at every D 64 point


@hopper_only
@pytest.mark.parametrize("D, config", [(128, ("persistent", 64, 64)), (64, ("persistent", 64, 128))])
def test_persistent_through_run_config(D, config):
    """The persistent kernel through the dispatch's run_config, launched three times: Triton's path, then
    FastLaunch's (its key built), then the plan's known binary (launch_planned)."""
    q, k, v = _inputs(2, 8, 2, 1024, D, torch.bfloat16, seed=D + 3)
    for causal in (True, False):
        for _ in range(3):
            out, lse = gluon_mod.run_config(q, k, v, causal, 1 / math.sqrt(D), config)
        _check(q, k, v, causal, out, lse)


def test_odd_query_block_count_is_refused():
    q = torch.empty(1, 2, 384, 128, dtype=torch.bfloat16)  # 3 query blocks of 128: no pairs
    with pytest.raises(ValueError, match="pairs query blocks"):
        persistent.attention_fwd_persistent(q, q, q, True, 0.1, block_m=128, block_n=128)
