"""Attention in tiles (minisynth.fast.tiled) against the reference, for every kind.

Every test names the path it checks: a ``"numba"`` layer built with
``tiles="always"`` (and its cache a ``TiledAttentionCache``) against a ``"numpy"``
layer, which never tiles; the kernels against their naive twins
(``tiled_forward.reference``), never a module attribute something could rebind.
"""

import tracemalloc

import numpy as np
import pytest
from helpers import (
    assert_gradient_close,
    assert_no_aliasing,
    assert_unchanged,
    seeds,
    snapshot,
    uniform,
    upstream,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import jit
from test_attention import keep_relu_away_from_kink

from minisynth import attention, gradcheck
from minisynth.attention import TILED_FROM, AttentionCache, check_tiles
from minisynth.fast import tiled
from minisynth.model import ModelConfig, SynthesizerLM

KINDS = ["vanilla", "dense", "random", "random_fixed", "factorized_dense", "factorized_random"]
MIXTURES = ["dense+vanilla", "random+vanilla", "dense+random+vanilla", "random+random_fixed",
            "factorized_dense+factorized_random", "vanilla+dense+random+random_fixed+"
            "factorized_dense+factorized_random"]  # fmt: skip
TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-4, atol=2e-5)}
T_MAX = 2 * tiled.TILE + 3  # across tile edges, and not a multiple of the tile


def layer_pair(kind, C, H, L, causal, dtype, seed):
    """The reference layer and a tiled fast layer with the same (randomised) weights."""
    options = {"factors": attention.default_factors(L)} if "factorized_dense" in kind else {}
    ref = attention.build(kind, C, H, L, causal=causal, seed=seed, dtype=dtype, **options)
    fast = attention.build(kind, C, H, L, causal=causal, seed=seed, dtype=dtype,
                           backend="numba", tiles="always", **options)  # fmt: skip
    rng = np.random.default_rng(seed)
    for name, p in ref.params.items():  # nonzero biases and mixture logits
        p[...] = uniform(rng, p.shape, -1.0, 1.0, dtype)
        fast.params[name][...] = p
    for name, b in ref.buffers.items():
        fast.buffers[name][...] = b
    assert ref.uses_tiles(L) is False and fast.uses_tiles(1) is True
    return ref, fast


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", KINDS + MIXTURES)
@given(B=st.integers(1, 2), H=st.integers(1, 3), hs=st.integers(1, 4), T=st.integers(1, T_MAX),
       causal=st.booleans(), seed=seeds)  # fmt: skip
@settings(deadline=None, max_examples=8)
def test_tiled_layer_matches_the_reference(kind, dtype, B, H, hs, T, causal, seed):
    C = H * hs
    ref, fast = layer_pair(kind, C, H, T_MAX, causal, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    x = uniform(rng, (B, T, C), dtype=dtype)
    dy = upstream(rng, (B, T, C), dtype)
    y_ref, c_ref = ref.forward(x)
    y, cache = fast.forward(x)
    assert isinstance(c_ref, AttentionCache) and isinstance(cache, tiled.TiledAttentionCache)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(cache.probs, c_ref.probs, **TOL[dtype])
    before = snapshot(x, dy, cache.lse, cache.v_tiles, *cache.pieces)
    dx_ref, g_ref = ref.backward(dy, c_ref)
    dx, grads = fast.backward(dy, cache)
    assert_unchanged(before, [x, dy, cache.lse, cache.v_tiles, *cache.pieces])
    assert_no_aliasing([dx, *grads.values()], [x, dy, *fast.params.values(), *cache.pieces])
    assert set(grads) == set(g_ref)
    # gradients are sums of up to B T^2 terms: their rounding grows with T and with the
    # largest gradient, and a gradient that is zero in exact arithmetic (vanilla's bk)
    # is all rounding
    scale = max(1.0, T / 16) * max(1.0, np.abs(dx_ref).max(),
                                   *(np.abs(g).max() for g in g_ref.values()))  # fmt: skip
    tol = dict(rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    for name, g in grads.items():
        assert g.dtype == dtype and g.shape == fast.params[name].shape, name
        np.testing.assert_allclose(g, g_ref[name], **tol, err_msg=name)


@pytest.mark.parametrize("kind", ["dense+random+vanilla", "factorized_dense+factorized_random"])
def test_tiled_layer_gradients_by_finite_differences(kind):
    """The tiled layer's own gradients, float64 central differences, across two tiles."""
    ref, fast = layer_pair(kind, 4, 2, tiled.TILE + 5, True, np.float64, 3)
    rng = np.random.default_rng(0)
    x = uniform(rng, (1, tiled.TILE + 5, 4))
    keep_relu_away_from_kink(fast, x)  # finite differences across ReLU's kink mean nothing
    dy = upstream(rng, x.shape)
    _, cache = fast.forward(x)
    dx, grads = fast.backward(dy, cache)
    assert isinstance(cache, tiled.TiledAttentionCache)
    wanted = {"x": x, "alpha": fast.params["alpha"], "Wv": fast.params["Wv"]}
    wanted.update({n: fast.params[n] for n in fast.params if n.split(".")[-1] in
                   ("R", "R1", "W2", "Wq", "Wa", "Wb")})  # fmt: skip
    for name, array in wanted.items():
        numeric = gradcheck.numerical_gradient_array(lambda: fast.forward(x)[0], array, dy)
        assert_gradient_close(name, dx if name == "x" else grads[name], numeric)


def random_pieces(rng, B, H, T, D, a, with_table, dtype):
    q = uniform(rng, (B, H, T, D), dtype=dtype)
    k = uniform(rng, (B, H, T, D), dtype=dtype)
    table = uniform(rng, (H, T, T), dtype=dtype) if with_table else np.zeros((H, 0, 0), dtype)
    if a:
        b = -(-T // a)  # enough columns: a b >= T
        A, Bt = uniform(rng, (B, H, T, a), dtype=dtype), uniform(rng, (B, H, T, b), dtype=dtype)
    else:
        A = Bt = np.zeros((B, H, T, 0), dtype)
    return tiled.Pieces(q, k, table, A, Bt)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, T_MAX), D=st.integers(0, 3),
       a=st.integers(0, 3), with_table=st.booleans(), causal=st.booleans(),
       seed=seeds)  # fmt: skip
@settings(deadline=None, max_examples=15)
def test_kernels_match_their_naive_twins(dtype, B, H, T, D, a, with_table, causal, seed):
    rng = np.random.default_rng(seed)
    pieces = random_pieces(rng, B, H, T, D, a, with_table, dtype)
    v = uniform(rng, (B, H, T, 3), dtype=dtype)
    do = upstream(rng, (B, H, T, 3), dtype)
    o, lse = tiled.tiled_forward(pieces, v, causal)
    o_ref, lse_ref = tiled.tiled_forward.reference(pieces, v, causal)
    np.testing.assert_allclose(o, o_ref, **TOL[dtype])
    np.testing.assert_allclose(lse, lse_ref, **TOL[dtype])
    delta = tiled.row_dots(do, o)
    before = snapshot(do, delta, lse, v, *pieces)
    grads = tiled.tiled_backward(do, delta, lse, pieces, v, causal)
    assert_unchanged(before, [do, delta, lse, v, *pieces])
    assert_no_aliasing(list(grads), [do, delta, lse, v, *pieces])
    for name, g, g_ref in zip(grads._fields, grads,
                              tiled.tiled_backward.reference(do, delta, lse, pieces, v, causal),
                              strict=True):  # fmt: skip
        np.testing.assert_allclose(g, g_ref, **TOL[dtype], err_msg=name)


@jit(nopython=True, cache=False)
def compiled_gemm(a, b, c, add):
    """The kernels' product as compiled code calls it: BLAS (plain Python under
    NUMBA_DISABLE_JIT=1)."""
    tiled._gemm(a, b, c, add)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(m=st.integers(0, 5), n=st.integers(0, 5), k=st.integers(0, 5),
       a_transposed=st.booleans(), b_transposed=st.booleans(), add=st.booleans(),
       seed=seeds)  # fmt: skip
@settings(deadline=None, max_examples=40)
def test_the_tiles_product_reads_views_in_place(dtype, m, n, k, a_transposed, b_transposed,
                                                add, seed):  # fmt: skip
    """c = a @ b or c += a @ b on views inside larger arrays, either operand transposed, any
    size down to 0: what the tile kernels hand BLAS (rows strided, offsets, a tile's .T)."""
    rng = np.random.default_rng(seed)
    big_a, big_b = uniform(rng, (8, 9), dtype=dtype), uniform(rng, (8, 9), dtype=dtype)
    a = big_a[1 : 1 + k, 2 : 2 + m].T if a_transposed else big_a[1 : 1 + m, 2 : 2 + k]
    b = big_b[2 : 2 + n, 1 : 1 + k].T if b_transposed else big_b[2 : 2 + k, 1 : 1 + n]
    big_c = uniform(rng, (7, 9), dtype=dtype)
    c = big_c[1 : 1 + m, 3 : 3 + n]
    expected = big_c.copy()
    expected[1 : 1 + m, 3 : 3 + n] = (c if add else 0) + a.astype(np.float64) @ b
    before = snapshot(big_a, big_b)
    compiled_gemm(a, b, c, add)
    assert_unchanged(before, [big_a, big_b])
    np.testing.assert_allclose(big_c, expected, **TOL[dtype])  # nothing outside c touched


def test_float32_exp_is_accurate_over_its_whole_range():
    """The polynomial exp of float32 logits against float64 libm, down to where it gives 0."""
    x = np.concatenate([-np.geomspace(1e-6, 87, 5000), [0.0, -88.0, -100.0]]).astype(np.float32)
    row = x.copy()
    # a tile's row at a time (the kernels never pass more): the sums are float32
    starts = range(0, len(row), tiled.TILE)
    totals = [tiled._exp_row(row[s : s + tiled.TILE], np.float32(0),
                             min(tiled.TILE, len(row) - 1 - s)) for s in starts]  # fmt: skip
    exact = np.exp(x.astype(np.float64))
    big = exact > 1e-37
    big[-1] = False  # the last column is one this row may not see: 0
    # the polynomial is good to 3e-7; rounding x log2(e) to float32 adds about 1e-7 |x|
    relative = np.abs(row[big] / exact[big] - 1)
    assert np.all(relative <= 3e-7 + 2e-7 * np.abs(x[big])), relative.max()
    assert np.all(row[~big][:-1] < 1e-37) and np.all(row >= 0) and row[-1] == 0
    for s, total in zip(starts, totals, strict=True):
        part = exact[s : min(s + tiled.TILE, len(row) - 1)].sum()
        # a float32 sum of n terms: within n float32 roundings of the exact one
        assert abs(total - part) <= tiled.TILE * np.finfo(np.float32).eps * part


def test_causal_rows_never_see_the_future_even_when_it_is_huge():
    """A future key 1000x larger than the rest changes no output of an earlier row."""
    ref, fast = layer_pair("vanilla", 4, 1, 300, True, np.float64, 0)
    rng = np.random.default_rng(1)
    x = uniform(rng, (1, 300, 4))
    y, _ = fast.forward(x)
    x2 = x.copy()
    x2[0, 200:] *= 1000.0
    y2, _ = fast.forward(x2)
    np.testing.assert_array_equal(y[0, :200], y2[0, :200])
    assert np.all(np.isfinite(y2))


def cache_arrays(obj):
    """Every ndarray reachable from a cache (NamedTuples and tuples, recursively)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, tuple):
        return [a for item in obj for a in cache_arrays(item)]
    return []


@pytest.mark.parametrize("kind", KINDS + ["dense+random+vanilla"])
def test_a_tiled_forward_keeps_no_map_of_the_batch(kind):
    B, T, H = 4, 200, 2
    _, fast = layer_pair(kind, 8, H, T, True, np.float32, 0)
    _, cache = fast.forward(uniform(np.random.default_rng(0), (B, T, 8), dtype=np.float32))
    largest = max(a.size for a in cache_arrays(cache))
    # a (B,H,T,T) map would be B H T^2; R (H,T,T) is a parameter, shared by the batch
    assert largest <= H * T * T < B * H * T * T


def step_peak_bytes(model, idx):
    """Peak bytes NumPy allocates during one loss-and-gradients call (tracemalloc)."""
    model.loss_and_grads(idx, idx)  # warm: kernels compiled, caches built
    tracemalloc.start()
    model.loss_and_grads(idx, idx)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("kind", ["vanilla", "dense", "factorized_random"])
def test_step_memory_is_flat_in_T_at_a_fixed_number_of_tokens(kind):
    """B T = 4096 tokens: from T = 128 to 1024 the full path's maps grow 8x, the tiled
    step's memory by at most a fifth (parameters here are far smaller than activations,
    and the kernels' scratch, two strips of up to ROWS x TILE per thread, far smaller still:
    with a model much narrower, threads' scratch alive at once made the peak vary)."""
    peaks = {}
    for tiles in ("always", "never"):
        for T in (128, 1024):
            config = ModelConfig(d_model=64, n_heads=4, n_layers=1, max_len=T, attention=kind)
            model = SynthesizerLM(config, backend="numba", tiles=tiles)
            idx = np.random.default_rng(0).integers(0, 256, (4096 // T, T))
            peaks[tiles, T] = step_peak_bytes(model, idx)
    assert peaks["always", 1024] < 1.2 * peaks["always", 128]
    assert peaks["never", 1024] > 2 * peaks["never", 128]  # the maps, as before tiles
    assert peaks["always", 1024] < peaks["never", 1024] / 2


def test_the_path_is_chosen_by_T_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv("MINISYNTH_TILES", raising=False)
    auto = attention.build("vanilla", 4, 1, 2048, backend="numba")
    assert auto.tiles == "auto"
    assert not auto.uses_tiles(TILED_FROM - 1) and auto.uses_tiles(TILED_FROM)
    never = attention.build("vanilla", 4, 1, 2048, backend="numba", tiles="never")
    assert not never.uses_tiles(2048)
    reference = attention.build("vanilla", 4, 1, 2048, tiles="always")  # the reference
    assert not reference.uses_tiles(2048)
    monkeypatch.setenv("MINISYNTH_TILES", "always")
    assert attention.build("vanilla", 4, 1, 8, backend="numba").uses_tiles(1)
    model = SynthesizerLM(ModelConfig(d_model=4, n_heads=1, n_layers=2, max_len=8),
                          backend="numba", tiles="never")  # fmt: skip
    assert model.tiles == "never" and not any(layer.uses_tiles(8) for layer in model.attn)
    model.tiles = "always"
    assert all(layer.tiles == "always" for layer in model.attn)


@pytest.mark.parametrize("bad", ["yes", "", "ALWAYS", 1])
def test_a_bad_tiles_setting_is_named(monkeypatch, bad):
    with pytest.raises(ValueError, match="tiles="):
        check_tiles(bad)
    if isinstance(bad, str) and bad:
        monkeypatch.setenv("MINISYNTH_TILES", bad)
        with pytest.raises(ValueError, match="MINISYNTH_TILES="):
            attention.build("vanilla", 4, 1, 8, backend="numba")


@pytest.mark.parametrize("kind", ["vanilla", "dense+random+vanilla"])
def test_a_tiled_model_matches_the_reference_model(kind):
    config = ModelConfig(d_model=8, n_heads=2, n_layers=2, max_len=140, attention=kind)
    ref = SynthesizerLM(config, seed=1, dtype=np.float64)
    fast = SynthesizerLM(config, seed=1, dtype=np.float64, backend="numba", tiles="always")
    idx = np.random.default_rng(0).integers(0, 256, (2, 140))
    loss_ref, g_ref = ref.loss_and_grads(idx, idx)
    loss, grads = fast.loss_and_grads(idx, idx)
    assert abs(loss - loss_ref) < 1e-12
    for name in g_ref:
        np.testing.assert_allclose(grads[name], g_ref[name], rtol=1e-9, atol=1e-12, err_msg=name)
    _, cache = fast.forward_with_cache(idx)
    assert all(isinstance(b.attn, tiled.TiledAttentionCache) for b in cache.blocks)


@pytest.mark.parametrize("kind", ["random", "vanilla", "dense+random+vanilla"])
def test_decoding_continues_a_tiled_prefill(kind):
    """prefill over a long prompt in tiles, then one step: the logits of a full forward."""
    config = ModelConfig(d_model=8, n_heads=2, n_layers=2, max_len=140, attention=kind)
    model = SynthesizerLM(config, seed=1, dtype=np.float64, backend="numba", tiles="always")
    idx = np.random.default_rng(0).integers(0, 256, (3, 131))
    _, states = model.prefill(idx[:, :-1])
    step_logits = model.decode_step(idx[:, -1], states)  # (B,V)
    full = model.forward(idx)  # (B,T,V)
    np.testing.assert_allclose(step_logits, full[:, -1], rtol=1e-9, atol=1e-9)
