"""Numba kernels against their NumPy twins, and the backends that hand them out.

Parity rule (``assert_parity``): a kernel result must have the twin's type,
shape and dtype, and agree elementwise with

    |kernel - twin| <= rtol |twin| + atol * scale  (+ 2 |twin - truth| in float32)

with rtol = atol = 1e-12 in float64 and rtol = 1e-5, atol = 1e-6 in float32.
``truth`` is the twin evaluated in float64 on the same (upcast) inputs: the
kernels accumulate row sums in float64 and are often *more* accurate than the
float32 twin, and the allowance lets the kernel differ from the twin by the
twin's own rounding error, but not by much more.

Everything here also runs with ``NUMBA_DISABLE_JIT=1`` (the kernels then run
as plain Python), which checks the kernel logic independently of compilation.
"""

import inspect
import subprocess
import sys

import numba
import numpy as np
import pytest
from helpers import assert_no_aliasing, assert_unchanged, seeds, snapshot, uniform, upstream
from hypothesis import given
from hypothesis import strategies as st
from numba.core.errors import TypingError

from minisynth import ModelConfig, SynthesizerLM, attention, backend, layers, optim
from minisynth.fast import kernels
from minisynth.fast import ops as fast_ops

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
TWINS = {name: getattr(kernels, name).reference for name in kernels.__all__}
TWIN_NAMES = list(kernels.__all__)

dtypes = st.sampled_from([np.float32, np.float64])
lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)  # () = one row
widths = st.integers(1, 8)


@pytest.fixture(autouse=True)
def numba_must_work():
    """Fail loudly if a kernel fell back to its twin: parity would then hold vacuously."""
    assert backend.numba_problem() is None, backend.numba_problem()
    yield
    assert backend.numba_problem() is None, backend.numba_problem()


@pytest.fixture
def fresh_backend(monkeypatch):
    """Let a test record a Numba problem for the process; forgotten afterwards."""
    monkeypatch.setattr(backend, "_numba_problem", None)
    yield monkeypatch


# ----------------------------------------------------------------------- helpers
def to_f64(a):
    """float32 arrays (also inside NamedTuple caches) upcast to float64; the rest unchanged."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        return a.astype(np.float64)
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return type(a)(*(to_f64(f) for f in a))
    return a


def truth_of(fn, *args):
    """``fn`` (a NumPy twin) evaluated in float64 on the upcast arguments."""
    return fn(*(to_f64(a) for a in args))


def strided(a):
    """The same values as ``a`` in a non-contiguous view (0-d arrays are returned as is)."""
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)  # (..., 2C)
    big[..., ::2] = a
    return big[..., ::2]  # (..., C)


def assert_parity(actual, desired, truth=None, scale=None, what="result"):
    """Kernel result vs twin result: same type, shape, dtype; values as in the module docstring."""
    assert type(actual) is type(desired), (what, type(actual), type(desired))
    a = np.asarray(actual)
    d = np.asarray(desired)
    assert a.shape == d.shape, (what, a.shape, d.shape)
    assert a.dtype == d.dtype, (what, a.dtype, d.dtype)
    if scale is None:
        finite = np.abs(d[np.isfinite(d)])
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
    tol = RTOL[d.dtype] * np.abs(d) + ATOL[d.dtype] * scale
    if truth is not None and d.dtype == np.float32:
        tol = tol + 2.0 * np.abs(d.astype(np.float64) - np.asarray(truth))
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf
        ok = (a == d) | (np.abs(a.astype(np.float64) - d) <= tol) | (np.isnan(a) & np.isnan(d))
    if not ok.all():
        i = np.unravel_index(np.argmax(~ok), ok.shape) if ok.ndim else ()
        raise AssertionError(
            f"{what}: {np.count_nonzero(~ok)} of {ok.size} elements differ; first at {i}: "
            f"kernel {a[i]!r}, twin {d[i]!r}, tolerance {np.broadcast_to(tol, ok.shape)[i]:.3e}"
        )


# ------------------------------------------------------------------ layer norm
@given(dtype=dtypes, lead=lead_shapes, C=widths, seed=seeds, contiguous=st.booleans())
def test_layernorm_matches_twin(dtype, lead, C, seed, contiguous):
    rng = np.random.default_rng(seed)
    x = uniform(rng, lead + (C,), dtype=dtype)  # (..., C)
    x = x if contiguous else strided(x)
    g, b = uniform(rng, (C,), dtype=dtype), uniform(rng, (C,), dtype=dtype)  # (C,)
    before = snapshot(x, g, b)
    out, cache = kernels.layernorm_forward(x, g, b)
    assert_unchanged(before, [x, g, b])
    ref_out, ref_cache = kernels.layernorm_forward.reference(x, g, b)
    true_out, true_cache = truth_of(kernels.layernorm_forward.reference, x, g, b)
    assert type(cache) is layers.LayerNormCache
    assert cache.g is g  # the twin stores the caller's gain
    assert_parity(out, ref_out, true_out, what="out")
    assert_parity(cache.xhat, ref_cache.xhat, true_cache.xhat, what="xhat")
    assert_parity(cache.rstd, ref_cache.rstd, true_cache.rstd, what="rstd")

    # backward: both run on the twin's cache, so only the backward arithmetic is compared
    dout = upstream(rng, out.shape, dtype=dtype)  # (..., C)
    dout = dout if contiguous else strided(dout)
    before = snapshot(dout, *ref_cache)
    grads = kernels.layernorm_backward(dout, ref_cache)
    assert_unchanged(before, [dout, *ref_cache])
    assert_no_aliasing(grads, [x, g, b, dout, *ref_cache])
    ref = kernels.layernorm_backward.reference(dout, ref_cache)
    true = truth_of(kernels.layernorm_backward.reference, dout, ref_cache)
    # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) cancels: scale atol by its terms
    terms = np.max(ref_cache.rstd) * np.max(np.abs(dout * g)) * (1.0 + np.max(ref_cache.xhat**2))
    assert isinstance(grads, tuple) and len(grads) == 3
    assert_parity(grads[0], ref[0], true[0], scale=max(1.0, float(terms)), what="dx")
    assert_parity(grads[1], ref[1], true[1], what="dg")
    assert_parity(grads[2], ref[2], true[2], what="db")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_backward_spans_several_row_blocks(dtype):
    """N > ROW_BLOCK with a partial last block: every block's partial sums are counted."""
    rng = np.random.default_rng(0)
    N, C = 2 * kernels.ROW_BLOCK + 5, 7
    x, g, b = (
        uniform(rng, (N, C), dtype=dtype),
        uniform(rng, (C,), dtype=dtype),
        uniform(rng, (C,), dtype=dtype),
    )
    _, cache = kernels.layernorm_forward.reference(x, g, b)
    dout = upstream(rng, (N, C), dtype=dtype)  # (N, C)
    got = kernels.layernorm_backward(dout, cache)
    ref = kernels.layernorm_backward.reference(dout, cache)
    true = truth_of(kernels.layernorm_backward.reference, dout, cache)
    for name, a, d, t in zip(("dx", "dg", "db"), got, ref, true, strict=True):
        assert_parity(a, d, t, what=name)


def test_layernorm_backward_does_not_depend_on_thread_count():
    """Column sums are reduced in fixed row blocks, so 1 or 2 threads give identical bits."""
    rng = np.random.default_rng(1)
    N, C = 5 * kernels.ROW_BLOCK + 3, 16
    x, g, b = uniform(rng, (N, C)), uniform(rng, (C,)), uniform(rng, (C,))
    _, cache = kernels.layernorm_forward(x, g, b)
    dout = upstream(rng, (N, C))  # (N, C)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = kernels.layernorm_backward(dout, cache)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = kernels.layernorm_backward(dout, cache)
    finally:
        numba.set_num_threads(threads)
    for a, c in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------------------ GELU
@given(
    dtype=dtypes,
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),  # () = a 0-d array
    seed=seeds,
    contiguous=st.booleans(),
)
def test_gelu_matches_twin(dtype, shape, seed, contiguous):
    rng = np.random.default_rng(seed)
    x = uniform(rng, shape, dtype=dtype)  # (...)
    x = x if contiguous else strided(x)
    before = snapshot(x)
    out, cache = kernels.gelu_forward(x)
    assert_unchanged(before, [x])
    ref_out, _ = kernels.gelu_forward.reference(x)
    assert type(cache) is layers.GeluCache and cache.x is x
    assert_parity(out, ref_out, truth_of(kernels.gelu_forward.reference, x)[0], what="out")

    dout = upstream(rng, shape, dtype=dtype)  # (...)
    dout = dout if contiguous else strided(dout)
    before = snapshot(dout, x)
    dx = kernels.gelu_backward(dout, cache)
    assert_unchanged(before, [dout, x])
    assert_no_aliasing([dx], [x, dout])
    ref = kernels.gelu_backward.reference(dout, cache)
    assert_parity(dx, ref, truth_of(kernels.gelu_backward.reference, dout, cache), what="dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_far_from_zero(dtype):
    """Saturated inputs: no overflow or NaN, exact 0 / x where the twin's tanh is exactly +-1."""
    x = np.array([-1e3, -50.0, -12.0, 12.0, 50.0, 1e3], dtype=dtype)  # (6,)
    dout = np.linspace(-1.0, 2.0, x.size).astype(dtype)  # (6,)
    out, cache = kernels.gelu_forward(x)
    np.testing.assert_array_equal(out, kernels.gelu_forward.reference(x)[0])
    np.testing.assert_array_equal(
        kernels.gelu_backward(dout, cache), kernels.gelu_backward.reference(dout, cache)
    )


# --------------------------------------------------------------- cross-entropy
@given(
    dtype=dtypes,
    lead=lead_shapes,
    V=st.integers(1, 9),
    seed=seeds,
    contiguous=st.booleans(),
    masked=st.booleans(),
)
def test_cross_entropy_matches_twin(dtype, lead, V, seed, contiguous, masked):
    rng = np.random.default_rng(seed)
    logits = uniform(rng, lead + (V,), dtype=dtype)  # (..., V)
    targets = rng.integers(0, V, size=lead)  # (...)
    if masked:  # -inf logits (never the target): fastmath must not assume finite values
        hide = rng.random(lead + (V,)) < 0.3  # (..., V)
        hide &= np.arange(V) != targets[..., None]
        logits[hide] = -np.inf
    logits = logits if contiguous else strided(logits)
    before = snapshot(logits, targets)
    loss, cache = kernels.cross_entropy_forward(logits, targets)
    assert_unchanged(before, [logits, targets])
    ref_loss, ref_cache = kernels.cross_entropy_forward.reference(logits, targets)
    true_loss, true_cache = truth_of(kernels.cross_entropy_forward.reference, logits, targets)
    assert type(cache) is layers.CrossEntropyCache
    assert_parity(loss, ref_loss, true_loss, what="loss")
    assert_parity(cache.probs, ref_cache.probs, true_cache.probs, what="probs")
    np.testing.assert_array_equal(cache.targets, ref_cache.targets)
    assert cache.targets.dtype == ref_cache.targets.dtype
    assert cache.logits_shape == ref_cache.logits_shape

    dloss = np.array(rng.uniform(0.5, 2.0))  # a scalar upstream gradient other than 1
    before = snapshot(dloss, *ref_cache[:2])
    dlogits = kernels.cross_entropy_backward(dloss, ref_cache)
    assert_unchanged(before, [dloss, *ref_cache[:2]])
    assert_no_aliasing([dlogits], [logits, targets, *ref_cache[:2]])
    ref = kernels.cross_entropy_backward.reference(dloss, ref_cache)
    true = truth_of(kernels.cross_entropy_backward.reference, dloss, ref_cache)
    assert_parity(dlogits, ref, true, what="dlogits")


# ------------------------------------------------------------------- embedding
@given(dtype=dtypes, lead=lead_shapes, V=st.integers(1, 6), C=widths, seed=seeds)
def test_embedding_backward_matches_twin(dtype, lead, V, C, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, size=lead)  # (...) small V: repeated ids are common
    W = uniform(rng, (V, C), dtype=dtype)  # (V, C)
    _, cache = layers.embedding_forward(idx, W)
    dout = upstream(rng, lead + (C,), dtype=dtype)  # (..., C)
    before = snapshot(idx, dout)
    dW = kernels.embedding_backward(dout, cache)
    assert_unchanged(before, [idx, dout])
    assert_no_aliasing([dW], [idx, W, dout])
    ref = kernels.embedding_backward.reference(dout, cache)
    assert_parity(dW, ref, truth_of(kernels.embedding_backward.reference, dout, cache), what="dW")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_backward_adds_in_the_order_of_add_at(dtype):
    """Many repeated ids, a strided dout: the sums agree with np.add.at bit for bit."""
    rng = np.random.default_rng(2)
    V, C = 5, 67
    idx = rng.integers(0, V, size=(3, 50))  # (B, T)
    _, cache = layers.embedding_forward(idx, uniform(rng, (V, C), dtype=dtype))
    dout = strided(upstream(rng, (3, 50, C), dtype=dtype))  # (B, T, C)
    np.testing.assert_array_equal(
        kernels.embedding_backward(dout, cache), kernels.embedding_backward.reference(dout, cache)
    )


# ----------------------------------------------------------------------- AdamW
@given(
    dtype=dtypes,
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=2).map(tuple),
    seed=seeds,
    steps=st.integers(1, 3),
    weight_decay=st.sampled_from([0.0, 0.1]),
    contiguous=st.booleans(),
)
def test_adamw_matches_twin(dtype, shape, seed, steps, weight_decay, contiguous):
    rng = np.random.default_rng(seed)
    p = uniform(rng, shape, dtype=dtype)  # (...)
    hp = dict(lr=float(rng.uniform(1e-3, 1e-1)), beta1=0.9, beta2=0.95, eps=1e-8)
    state_k = [p.copy(), np.zeros_like(p), np.zeros_like(p)]  # p, m, v for the kernel
    state_r = [p.copy(), np.zeros_like(p), np.zeros_like(p)]  # for the twin
    state_t = [a.astype(np.float64) for a in state_r]  # for the twin in float64
    if not contiguous:  # strided views must be updated in place all the same
        state_k = [strided(a) for a in state_k]
    for t in range(1, steps + 1):
        g = uniform(rng, shape, dtype=dtype)  # (...)
        before = snapshot(g)
        out = kernels.adamw_update(
            state_k[0], g, state_k[1], state_k[2], **hp, weight_decay=weight_decay, t=t
        )
        assert out is None
        assert_unchanged(before, [g])
        kernels.adamw_update.reference(
            state_r[0], g, state_r[1], state_r[2], **hp, weight_decay=weight_decay, t=t
        )
        kernels.adamw_update.reference(
            state_t[0], g.astype(np.float64), state_t[1], state_t[2], **hp,
            weight_decay=weight_decay, t=t,
        )  # fmt: skip
    for name, a, d, tr in zip("pmv", state_k, state_r, state_t, strict=True):
        assert_parity(a, d, tr, what=name)


@pytest.mark.parametrize("name", TWIN_NAMES)
def test_kernel_signatures_equal_their_twins(name):
    assert inspect.signature(getattr(kernels, name)) == inspect.signature(TWINS[name])
    assert getattr(kernels, name).__doc__


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT: nothing is compiled")
def test_jit_options_keep_infinities():
    flags = kernels.JIT_OPTS["fastmath"]
    assert isinstance(flags, set) and not {"nnan", "ninf", "fast"} & flags
    dispatchers = {
        name: fn
        for name, fn in vars(kernels).items()
        if isinstance(fn, numba.core.registry.CPUDispatcher)
    }
    assert len(dispatchers) >= len(kernels.__all__)  # one jitted inner function per kernel
    for name, fn in dispatchers.items():
        assert fn.targetoptions["fastmath"] == flags, name
        assert fn.targetoptions["nopython"], name


# ---------------------------------------------------------------------- backend
def test_each_backend_hands_out_its_own_functions():
    assert backend.operations("numpy") is layers
    assert backend.operations("numba") is fast_ops
    assert backend.backend_of(layers) == "numpy" and backend.backend_of(fast_ops) == "numba"


def test_the_fast_namespace_has_every_reference_function_or_its_twin():
    public = {
        name: fn
        for name, fn in vars(layers).items()
        if inspect.isfunction(fn) and fn.__module__ == layers.__name__ and name[0] != "_"
    }
    # plus the tiled attention layer, which has no reference function to stand in for
    tiled = {"tiled_attention_forward", "tiled_attention_backward"}
    assert set(fast_ops.__all__) == set(public) | {"adamw_update"} | tiled
    for name, reference in {**public, "adamw_update": optim.adamw_update}.items():
        fn = getattr(fast_ops, name)
        assert fn is reference or fn.reference is reference, name
    twins = {name for name in fast_ops.__all__ if getattr(fast_ops, name) in kernels.TWINS}
    assert twins == set(TWIN_NAMES)  # every kernel is handed out


@pytest.mark.parametrize("name", ["torch", "NumPy", "", None])
def test_unknown_backend_names_are_rejected(name):
    config = ModelConfig(d_model=8, n_heads=2, n_layers=1, max_len=4)
    for build in (
        lambda: backend.operations(name),
        lambda: SynthesizerLM(config, backend=name),
        lambda: attention.build("dense", 8, 2, 4, backend=name),
        lambda: optim.AdamW({"w": np.zeros(2)}, backend=name),
    ):
        with pytest.raises(ValueError, match="valid backends are 'numpy', 'numba'"):
            build()


def test_a_kernel_that_fails_to_compile_falls_back_with_one_warning(fresh_backend):
    def broken(*args):
        raise TypingError("simulated compile failure")

    fresh_backend.setattr(kernels, "_gelu_exp_arg", broken)
    model = SynthesizerLM(ModelConfig(d_model=8, n_heads=2, n_layers=1, max_len=4), backend="numba")
    assert model.backend == "numba"
    x = np.linspace(-2.0, 2.0, 7)  # (7,)
    with pytest.warns(RuntimeWarning, match="gelu_forward failed to compile") as record:
        out, cache = kernels.gelu_forward(x)
        kernels.gelu_forward(x)  # no second warning
        assert backend.operations("numba") is layers  # Numba stays off for the process
    assert len(record) == 1
    np.testing.assert_array_equal(out, kernels.gelu_forward.reference(x)[0])
    assert model.backend == "numpy"  # what computes it now
    assert layers.gelu_forward is kernels.gelu_forward.reference  # the module is untouched
    # other kernels now go straight to their references too
    _, ln_cache = kernels.layernorm_forward(x, np.ones(7), np.zeros(7))
    np.testing.assert_array_equal(
        ln_cache.xhat, kernels.layernorm_forward.reference(x, np.ones(7), np.zeros(7))[1].xhat
    )


def test_missing_numba_falls_back_to_numpy_with_one_warning():
    code = """
import sys, warnings
sys.modules["numba"] = None  # `import numba` now raises ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from minisynth import ModelConfig, SynthesizerLM, backend, layers
    from minisynth.optim import AdamW
    gelu = layers.gelu_forward
    model = SynthesizerLM(ModelConfig(d_model=8, n_heads=2, max_len=4), backend="numba")
    assert model.backend == "numpy" and model.ops is layers
    assert AdamW(model.params, backend="numba").backend == "numpy"
    assert backend.operations("numba") is layers
    assert layers.gelu_forward is gelu
msgs = [str(w.message) for w in caught if w.category is RuntimeWarning]
assert len(msgs) == 1 and "numba could not be imported" in msgs[0], msgs
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
