"""Tests for fastgauss.NoiseSchedule: constructors, derived tables, immutability, errors.

Expected values are computed independently here with plain Python loops and the
``math`` module (or exact ``fractions``). Tolerances are stated at each assertion:
rtol=1e-14 where the test evaluates the same formula in the same order (only
libm-vs-NumPy ulp differences can appear), looser where a test uses a different but
algebraically equal formula and rounding gets amplified by cancellation.
"""

import copy
import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgauss import NoiseSchedule

ARRAY_ATTRIBUTES = [
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
]

SAME_FORMULA = dict(rtol=1e-14, atol=0)


def assert_close(actual, expected, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


def cumprod_loop(betas):
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return out


SCHEDULES = {
    "linear-1000": lambda: NoiseSchedule.linear(1000),
    "scaled_linear-50": lambda: NoiseSchedule.scaled_linear(50),
    "cosine-1000": lambda: NoiseSchedule.cosine(1000),
    "cosine-s0-maxbeta1-20": lambda: NoiseSchedule.cosine(20, s=0.0, max_beta=1.0),
    "rescaled-linear-20": lambda: NoiseSchedule.linear(20).rescale_zero_terminal_snr(),
    "from_alphas_cumprod-zero-end": lambda: NoiseSchedule.from_alphas_cumprod([0.9, 0.5, 0.1, 0.0]),
    "from_gammas-3": lambda: NoiseSchedule.from_gammas([0.999, 0.7, 0.2]),
    "betas-with-one-mid": lambda: NoiseSchedule([0.3, 1.0, 0.2]),
    "T2": lambda: NoiseSchedule([0.25, 0.5]),
    "T1": lambda: NoiseSchedule([0.3]),
}


@pytest.fixture(params=sorted(SCHEDULES), scope="module")
def schedule(request):
    return SCHEDULES[request.param]()


# --------------------------------------------------------------------------- constructors


@pytest.mark.parametrize("T", [1, 2, 10, 1000])
def test_linear_matches_explicit_interpolation(T):
    start, end = 1e-4, 0.02
    s = NoiseSchedule.linear(T, start, end)
    if T == 1:
        expected = [start]
    else:
        expected = [start + (end - start) * i / (T - 1) for i in range(T)]
    assert_close(s.betas, expected, rtol=1e-14)  # linspace rounds start + i*step differently
    assert s.betas[0] == start  # both ends exact
    if T > 1:
        assert s.betas[-1] == end


def test_linear_defaults():
    s = NoiseSchedule.linear()
    assert s.num_timesteps == 1000
    assert s.betas[0] == 1e-4 and s.betas[-1] == 0.02
    assert s == NoiseSchedule.linear(1000, 1e-4, 0.02)


@pytest.mark.parametrize("T", [1, 3, 1000])
def test_scaled_linear_matches_formula(T):
    start, end = 0.00085, 0.012
    s = NoiseSchedule.scaled_linear(T) if T == 1000 else NoiseSchedule.scaled_linear(T, start, end)
    a, b = math.sqrt(start), math.sqrt(end)
    if T == 1:
        expected = [a * a]
    else:
        expected = [(a + (b - a) * i / (T - 1)) ** 2 for i in range(T)]
    assert_close(s.betas, expected, rtol=1e-14)
    assert_close([s.betas[0], s.betas[-1]], [start, end if T > 1 else start], rtol=1e-15)
    # sqrt(beta) is linear in t: constant first differences
    if T > 2:
        assert_close(np.diff(np.sqrt(s.betas)), np.full(T - 1, (b - a) / (T - 1)), rtol=1e-10)


def cosine_betas_loop(T, s, max_beta):
    """improved-diffusion's betas_for_alpha_bar, written out."""

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]


@pytest.mark.parametrize("T,s,max_beta", [(1000, 0.008, 0.999), (50, 0.0, 1.0), (7, 0.1, 0.5), (1, 0.008, 0.999)])
def test_cosine_matches_betas_for_alpha_bar(T, s, max_beta):
    sched = NoiseSchedule.cosine(T, s=s, max_beta=max_beta)
    expected = cosine_betas_loop(T, s, max_beta)
    # 1 - ratio cancels: an ulp in cos becomes ~1e-12 relative in beta_0
    assert_close(sched.betas, expected, rtol=1e-10)


def test_cosine_defaults_clip_last_beta_and_track_alpha_bar():
    s = NoiseSchedule.cosine()
    assert s.num_timesteps == 1000
    assert s.betas[-1] == 0.999  # clipped exactly to max_beta
    assert np.all(s.betas[:-1] < 0.999)
    # before clipping matters, abar_t = f((t+1)/T) / f(0) (telescoping product)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [f((t + 1) / 1000) / f(0) for t in range(999)]
    assert_close(s.alphas_cumprod[:999], expected, rtol=1e-10)


def test_init_stores_betas_exactly_and_copies_input():
    raw = np.array([0.1, 0.2, 0.3], dtype=np.float64)
    s = NoiseSchedule(raw)
    assert np.array_equal(s.betas, raw)
    raw[0] = 0.9
    assert s.betas[0] == 0.1  # the schedule does not alias the caller's array
    assert NoiseSchedule([1, 1]).betas.tolist() == [1.0, 1.0]  # integers are accepted
    s32 = NoiseSchedule(np.array([0.1, 0.2], dtype=np.float32))
    assert s32.betas.dtype == np.float64
    assert s32.betas[0] == np.float64(np.float32(0.1))


def test_from_alphas_cumprod_round_trip():
    ref = NoiseSchedule.linear(1000)
    s = NoiseSchedule.from_alphas_cumprod(ref.alphas_cumprod)
    assert np.array_equal(s.alphas_cumprod, ref.alphas_cumprod)  # stored exactly, not re-derived
    # betas = 1 - abar_t / abar_{t-1}, same formula in a loop: tight
    prev, expected = 1.0, []
    for a in ref.alphas_cumprod.tolist():
        expected.append(1.0 - a / prev)
        prev = a
    assert_close(s.betas, expected, **SAME_FORMULA)
    # and back to the original betas: cancellation in 1 - ratio, ~1e-12 relative at beta=1e-4
    assert_close(s.betas, ref.betas, rtol=1e-10)


def test_from_alphas_cumprod_keeps_exact_zero_and_copies():
    abar = np.array([0.9, 0.45, 0.0])
    s = NoiseSchedule.from_alphas_cumprod(abar)
    abar[0] = 0.5
    assert s.alphas_cumprod.tolist() == [0.9, 0.45, 0.0]
    assert s.alphas_cumprod[-1] == 0.0 and not np.signbit(s.alphas_cumprod[-1])
    assert s.betas[-1] == 1.0
    assert_close(s.betas, [0.1, 0.5, 1.0], rtol=1e-15)
    assert s.snr[-1] == 0.0 and s.sqrt_one_minus_alphas_cumprod[-1] == 1.0
    neg_zero = NoiseSchedule.from_alphas_cumprod([0.5, -0.0])
    assert not np.signbit(neg_zero.alphas_cumprod[-1])  # -0.0 normalized, so equality is bytewise


@pytest.mark.parametrize("gammas", [[0.999, 0.7, 0.2, 0.0], [0.9999999, 0.5, 0.49999, 1e-9], [0.0]])
def test_from_gammas_matches_exact_formula(gammas):
    s = NoiseSchedule.from_gammas(gammas)
    exact = [float(1 - Fraction(g) ** 2) for g in gammas]  # exact rational 1 - gamma^2, rounded once
    assert_close(s.betas, exact, rtol=4e-16)  # at most ~2 roundings
    assert np.all((s.betas > 0) & (s.betas <= 1))


def test_from_gammas_agrees_with_sqrt_alphas():
    ref = NoiseSchedule.cosine(200)
    s = NoiseSchedule.from_gammas(np.sqrt(ref.alphas))
    assert_close(s.betas, ref.betas, rtol=1e-9)  # sqrt then square: ~eps/beta relative


# --------------------------------------------------------------------------- derived tables


def test_derived_tables_match_formulas(schedule):
    s = schedule
    T = s.num_timesteps
    betas = s.betas.tolist()
    abar = s.alphas_cumprod.tolist()
    alphas = [1.0 - b for b in betas]
    abar_prev = [1.0] + abar[:-1]
    pv = [betas[t] * (1.0 - abar_prev[t]) / (1.0 - abar[t]) for t in range(T)]
    assert_close(s.alphas, alphas, **SAME_FORMULA)
    assert_close(s.alphas_cumprod_prev, abar_prev, **SAME_FORMULA)
    assert_close(s.sqrt_alphas_cumprod, [math.sqrt(a) for a in abar], **SAME_FORMULA)
    assert_close(s.sqrt_one_minus_alphas_cumprod, [math.sqrt(1.0 - a) for a in abar], **SAME_FORMULA)
    assert_close(s.posterior_variance, pv, **SAME_FORMULA)
    clipped = [pv[1]] + pv[1:] if T > 1 else pv
    expected_log = [math.log(v) if v > 0 else -math.inf for v in clipped]
    assert_close(s.posterior_log_variance_clipped, expected_log, **SAME_FORMULA)
    coef1 = [betas[t] * math.sqrt(abar_prev[t]) / (1.0 - abar[t]) for t in range(T)]
    coef2 = [(1.0 - abar_prev[t]) * math.sqrt(alphas[t]) / (1.0 - abar[t]) for t in range(T)]
    assert_close(s.posterior_mean_coef1, coef1, **SAME_FORMULA)
    assert_close(s.posterior_mean_coef2, coef2, **SAME_FORMULA)
    assert_close(s.snr, [abar[t] / (1.0 - abar[t]) for t in range(T)], **SAME_FORMULA)
    assert s.alphas_cumprod_prev[0] == 1.0
    assert s.posterior_variance[0] == 0.0  # exactly: 1 - abar_{-1} = 0, no 0/0
    assert s.posterior_mean_coef2[0] == 0.0


@pytest.mark.parametrize("name", ["linear-1000", "cosine-1000", "scaled_linear-50", "from_gammas-3", "T1"])
def test_alphas_cumprod_is_cumprod_of_alphas(name):
    s = SCHEDULES[name]()
    assert_close(s.alphas_cumprod, cumprod_loop(s.betas.tolist()), **SAME_FORMULA)


def test_posterior_variance_is_bayes_posterior(schedule):
    s = schedule
    T = s.num_timesteps
    for t in range(1, T):
        prior_var = 1.0 - s.alphas_cumprod_prev[t]  # Var(x_{t-1} | x_0)
        beta, alpha = s.betas[t], s.alphas[t]
        bayes = 1.0 / (1.0 / prior_var + alpha / beta)  # precisions add
        # different but equal formula; 1 - abar cancels near abar = 1 -> ~1e-12 relative
        assert s.posterior_variance[t] == pytest.approx(bayes, rel=1e-10, abs=0)
    assert np.all(s.posterior_variance >= 0.0)
    assert np.all(s.posterior_variance <= s.betas * (1 + 4e-16))


def test_posterior_mean_is_consistent_noise_free(schedule):
    # with x_t = sqrt(abar_t) x_0 (no noise) the posterior mean is sqrt(abar_{t-1}) x_0
    s = schedule
    lhs = s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.sqrt_alphas_cumprod
    assert_close(lhs, np.sqrt(s.alphas_cumprod_prev), rtol=1e-10)


def test_single_step_schedule():
    s = NoiseSchedule([0.3])
    assert len(s) == 1 and s.num_timesteps == 1
    assert s.posterior_variance.tolist() == [0.0]
    assert s.posterior_log_variance_clipped.tolist() == [-math.inf]  # documented: log(0)
    assert s.posterior_mean_coef1[0] == pytest.approx(1.0, rel=1e-15)


# --------------------------------------------------------------------------- rescale


def lin_et_al_algorithm_1(betas):
    """Lin et al. 2024, Algorithm 1, with plain loops and math.sqrt."""
    abar = cumprod_loop(betas)
    root = [math.sqrt(a) for a in abar]
    a0, aT = root[0], root[-1]
    root = [r - aT for r in root]
    root = [r * (a0 / (a0 - aT)) for r in root]
    abar = [r * r for r in root]
    alphas = [abar[0]] + [abar[t] / abar[t - 1] for t in range(1, len(abar))]
    return [1.0 - a for a in alphas], abar


@pytest.mark.parametrize("make", [lambda: NoiseSchedule.linear(1000), lambda: NoiseSchedule.scaled_linear(1000), lambda: NoiseSchedule.cosine(100), lambda: NoiseSchedule([0.5, 0.5])])
def test_rescale_zero_terminal_snr(make):
    base = make()
    before = base.betas.copy()
    r = base.rescale_zero_terminal_snr()
    assert r is not base and np.array_equal(base.betas, before)  # a new schedule; base unchanged
    assert r.alphas_cumprod[-1] == 0.0  # exactly
    assert r.betas[-1] == 1.0 and r.snr[-1] == 0.0
    assert abs(r.sqrt_alphas_cumprod[0] - base.sqrt_alphas_cumprod[0]) <= 1e-12
    assert np.all(np.diff(r.alphas_cumprod) < 0)  # strictly decreasing
    exp_betas, exp_abar = lin_et_al_algorithm_1(base.betas.tolist())
    assert_close(r.betas, exp_betas, rtol=1e-12)
    assert_close(r.alphas_cumprod, exp_abar, rtol=1e-12, atol=1e-300)
    for name in ARRAY_ATTRIBUTES:
        values = getattr(r, name)
        assert np.all(np.isfinite(values)), name


def test_rescale_is_idempotent_and_rejects_one_step():
    r = NoiseSchedule.linear(100).rescale_zero_terminal_snr()
    rr = r.rescale_zero_terminal_snr()
    assert rr.alphas_cumprod[-1] == 0.0
    assert_close(rr.alphas_cumprod, r.alphas_cumprod, rtol=1e-14)
    with pytest.raises(ValueError, match="num_timesteps"):
        NoiseSchedule([0.5]).rescale_zero_terminal_snr()


# --------------------------------------------------------------------------- immutability


def test_arrays_are_float64_length_T_read_only(schedule):
    T = schedule.num_timesteps
    assert type(schedule.num_timesteps) is int and len(schedule) == T
    for name in ARRAY_ATTRIBUTES:
        arr = getattr(schedule, name)
        assert isinstance(arr, np.ndarray), name
        assert arr.dtype == np.float64 and arr.shape == (T,), name
        assert arr.flags.c_contiguous and arr.flags.aligned, name
        assert not arr.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 0.5
        with pytest.raises(ValueError):
            arr.flags.writeable = True  # cannot be unlocked either
        assert getattr(schedule, name) is arr  # computed once, not per access


@pytest.mark.parametrize("name", ARRAY_ATTRIBUTES + ["num_timesteps", "_betas", "new_attribute"])
def test_attributes_cannot_be_rebound_or_deleted(name):
    s = NoiseSchedule.linear(10)
    with pytest.raises(AttributeError):
        setattr(s, name, np.zeros(10))
    with pytest.raises(AttributeError):
        delattr(s, name)
    assert np.array_equal(s.betas, np.linspace(1e-4, 0.02, 10))


def test_equality_hash_pickle_copy():
    a, b = NoiseSchedule.linear(10), NoiseSchedule.linear(10)
    assert a == b and hash(a) == hash(b) and not (a != b)
    assert {a: 1}[b] == 1
    assert NoiseSchedule(a.betas) == a  # same betas -> same cumprod -> equal
    assert a != NoiseSchedule.linear(11)
    assert a != NoiseSchedule.linear(10, beta_end=0.03)
    assert a != NoiseSchedule.cosine(10)
    assert a != "linear" and a != a.betas.tolist()
    # same betas but abar given differently -> not equal (abar compared too)
    c = NoiseSchedule.from_alphas_cumprod(a.alphas_cumprod)
    assert (c == a) == (np.array_equal(c.betas, a.betas))
    for clone in (pickle.loads(pickle.dumps(a)), copy.copy(a), copy.deepcopy(a)):
        assert clone == a and hash(clone) == hash(a)
        for name in ARRAY_ATTRIBUTES:
            assert np.array_equal(getattr(clone, name), getattr(a, name), equal_nan=True), name
            assert not getattr(clone, name).flags.writeable, name
    # abar given exactly that a cumprod of its betas would not reproduce (beta rounds to 1)
    given = NoiseSchedule.from_alphas_cumprod([0.5, 1e-300])
    assert given.betas[-1] == 1.0 and given.alphas_cumprod[-1] == 1e-300
    for clone in (pickle.loads(pickle.dumps(given)), copy.deepcopy(given)):
        assert clone == given and clone.alphas_cumprod[-1] == 1e-300


def test_repr_and_len():
    assert repr(NoiseSchedule.linear(1000)) == "NoiseSchedule(num_timesteps=1000, betas=[0.0001 ... 0.02])"
    assert repr(NoiseSchedule([0.5])) == "NoiseSchedule(num_timesteps=1, betas=[0.5])"
    assert repr(NoiseSchedule([0.25, 0.5])) == "NoiseSchedule(num_timesteps=2, betas=[0.25 0.5])"
    assert len(NoiseSchedule.cosine(37)) == 37


def test_num_timesteps_accepts_numpy_integers():
    assert NoiseSchedule.linear(np.int64(5)) == NoiseSchedule.linear(5)
    assert type(NoiseSchedule.cosine(np.int32(3)).num_timesteps) is int


# --------------------------------------------------------------------------- errors

ERROR_CASES = [
    # betas
    (lambda: NoiseSchedule(np.full((2, 3), 0.1)), ValueError, r"betas must be 1-D; got shape \(2, 3\)"),
    (lambda: NoiseSchedule(0.5), ValueError, r"betas must be 1-D; got shape \(\)"),
    (lambda: NoiseSchedule([]), ValueError, r"betas must be non-empty"),
    (lambda: NoiseSchedule([0.1, np.nan]), ValueError, r"betas must be finite; betas\[1\] = nan"),
    (lambda: NoiseSchedule([0.1, np.inf]), ValueError, r"betas must be finite; betas\[1\] = inf"),
    (lambda: NoiseSchedule([-np.inf]), ValueError, r"betas must be finite; betas\[0\] = -inf"),
    (lambda: NoiseSchedule([0.1, 0.2, 0.0]), ValueError, r"betas must be in \(0, 1\]; betas\[2\] = 0\.0"),
    (lambda: NoiseSchedule([-0.1]), ValueError, r"betas must be in \(0, 1\]; betas\[0\] = -0\.1"),
    (lambda: NoiseSchedule([0.1, 0.2, 0.3, 1.5]), ValueError, r"betas must be in \(0, 1\]; betas\[3\] = 1\.5"),
    (lambda: NoiseSchedule([1e-17, 0.5]), ValueError, r"betas\[0\] = 1e-17 is too small"),
    (lambda: NoiseSchedule([[0.1], [0.1, 0.2]]), ValueError, r"betas must be a 1-D array"),
    (lambda: NoiseSchedule([0.1 + 0j]), TypeError, r"betas must be real, not complex"),
    (lambda: NoiseSchedule(["0.1"]), TypeError, r"betas must be an array of real numbers"),
    (lambda: NoiseSchedule([None]), TypeError, r"betas must be an array of real numbers"),
    (lambda: NoiseSchedule([True, True]), TypeError, r"betas must be an array of real numbers; got dtype bool"),
    # num_timesteps, every constructor
    (lambda: NoiseSchedule.linear(0), ValueError, r"num_timesteps must be a positive integer; got 0"),
    (lambda: NoiseSchedule.linear(-3), ValueError, r"num_timesteps must be a positive integer; got -3"),
    (lambda: NoiseSchedule.linear(10.0), TypeError, r"num_timesteps must be an int; got float"),
    (lambda: NoiseSchedule.linear("10"), TypeError, r"num_timesteps must be an int; got str"),
    (lambda: NoiseSchedule.linear(True), TypeError, r"num_timesteps must be an int; got bool"),
    (lambda: NoiseSchedule.scaled_linear(0), ValueError, r"num_timesteps must be a positive integer"),
    (lambda: NoiseSchedule.scaled_linear(2.5), TypeError, r"num_timesteps must be an int"),
    (lambda: NoiseSchedule.cosine(0), ValueError, r"num_timesteps must be a positive integer"),
    (lambda: NoiseSchedule.cosine(None), TypeError, r"num_timesteps must be an int"),
    # scalar parameters
    (lambda: NoiseSchedule.linear(10, beta_start=0.0), ValueError, r"beta_start must be in \(0, 1\]; got beta_start = 0\.0"),
    (lambda: NoiseSchedule.linear(10, beta_start=-1e-4), ValueError, r"beta_start must be in \(0, 1\]"),
    (lambda: NoiseSchedule.linear(10, beta_end=1.5), ValueError, r"beta_end must be in \(0, 1\]; got beta_end = 1\.5"),
    (lambda: NoiseSchedule.linear(10, beta_end=np.nan), ValueError, r"beta_end must be finite"),
    (lambda: NoiseSchedule.linear(10, beta_start="0.1"), TypeError, r"beta_start must be a real number"),
    (lambda: NoiseSchedule.scaled_linear(10, beta_start=0.0), ValueError, r"beta_start must be in \(0, 1\]"),
    (lambda: NoiseSchedule.scaled_linear(10, beta_end=2.0), ValueError, r"beta_end must be in \(0, 1\]"),
    (lambda: NoiseSchedule.scaled_linear(10, beta_end=1j), TypeError, r"beta_end must be a real number"),
    (lambda: NoiseSchedule.cosine(10, s=-0.1), ValueError, r"s must be >= 0; got s = -0\.1"),
    (lambda: NoiseSchedule.cosine(10, s=np.inf), ValueError, r"s must be finite"),
    (lambda: NoiseSchedule.cosine(10, max_beta=0.0), ValueError, r"max_beta must be in \(0, 1\]"),
    (lambda: NoiseSchedule.cosine(10, max_beta=1.01), ValueError, r"max_beta must be in \(0, 1\]"),
    (lambda: NoiseSchedule.cosine(10, max_beta=True), TypeError, r"max_beta must be a real number"),
    # alphas_cumprod
    (lambda: NoiseSchedule.from_alphas_cumprod([0.9, 0.95]), ValueError, r"alphas_cumprod must be strictly decreasing; alphas_cumprod\[1\] = 0\.95"),
    (lambda: NoiseSchedule.from_alphas_cumprod([0.9, 0.5, 0.5]), ValueError, r"alphas_cumprod must be strictly decreasing; alphas_cumprod\[2\]"),
    (lambda: NoiseSchedule.from_alphas_cumprod([1.0, 0.5]), ValueError, r"alphas_cumprod must be in \[0, 1\); alphas_cumprod\[0\] = 1\.0"),
    (lambda: NoiseSchedule.from_alphas_cumprod([0.5, -0.1]), ValueError, r"alphas_cumprod must be in \[0, 1\); alphas_cumprod\[1\] = -0\.1"),
    (lambda: NoiseSchedule.from_alphas_cumprod([0.5, np.nan]), ValueError, r"alphas_cumprod must be finite"),
    (lambda: NoiseSchedule.from_alphas_cumprod([[0.5, 0.4]]), ValueError, r"alphas_cumprod must be 1-D; got shape \(1, 2\)"),
    (lambda: NoiseSchedule.from_alphas_cumprod([]), ValueError, r"alphas_cumprod must be non-empty"),
    (lambda: NoiseSchedule.from_alphas_cumprod([0.5j]), TypeError, r"alphas_cumprod must be real"),
    # gammas
    (lambda: NoiseSchedule.from_gammas([0.9, 1.0]), ValueError, r"gammas must be in \[0, 1\); gammas\[1\] = 1\.0"),
    (lambda: NoiseSchedule.from_gammas([-0.1]), ValueError, r"gammas must be in \[0, 1\); gammas\[0\] = -0\.1"),
    (lambda: NoiseSchedule.from_gammas([np.nan]), ValueError, r"gammas must be finite"),
    (lambda: NoiseSchedule.from_gammas(np.full((2, 2), 0.5)), ValueError, r"gammas must be 1-D"),
    (lambda: NoiseSchedule.from_gammas([]), ValueError, r"gammas must be non-empty"),
    (lambda: NoiseSchedule.from_gammas(["x"]), TypeError, r"gammas must be an array of real numbers"),
]


@pytest.mark.parametrize("make,exc,match", ERROR_CASES, ids=[c[2][:40] for c in ERROR_CASES])
def test_errors_name_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# --------------------------------------------------------------------------- properties

betas_lists = st.lists(st.floats(min_value=1e-10, max_value=0.999), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, database=None)
@given(betas_lists)
def test_random_betas_give_a_valid_schedule(betas):
    s = NoiseSchedule(betas)
    abar = s.alphas_cumprod
    assert np.array_equal(s.betas, betas)
    assert np.all((abar > 0) & (abar < 1))
    assert np.all(np.diff(abar) < 0)  # strictly decreasing
    assert np.all(np.diff(s.snr) < 0) and np.all(s.snr > 0)
    pv = s.posterior_variance
    assert pv[0] == 0.0 and np.all(pv >= 0)
    assert np.all(pv <= s.betas * (1 + 4e-16))  # <= beta up to one rounding
    assert np.all(pv <= (1 - s.alphas_cumprod_prev) * (1 + 4e-16))
    assert np.all(np.isfinite(s.posterior_log_variance_clipped)) or len(s) == 1
    assert np.all((s.posterior_mean_coef1 >= 0) & (s.posterior_mean_coef2 >= 0))
    # round trip through the cumulative products keeps them exactly
    back = NoiseSchedule.from_alphas_cumprod(abar)
    assert np.array_equal(back.alphas_cumprod, abar)
    assert np.all((back.betas > 0) & (back.betas <= 1))


@settings(max_examples=150, deadline=None, database=None)
@given(st.sets(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1, max_size=40))
def test_random_alphas_cumprod_are_stored_exactly(values):
    abar = sorted(values, reverse=True)
    s = NoiseSchedule.from_alphas_cumprod(abar)
    assert s.alphas_cumprod.tolist() == [v + 0.0 for v in abar]
    assert np.all((s.betas > 0) & (s.betas <= 1))
    assert np.all(np.isfinite(s.snr)) and np.all(np.isfinite(s.posterior_variance))
    # abar_t = abar_{t-1} * alpha_t up to rounding: alpha = 1 - (1 - ratio) carries an
    # absolute error of about one ulp of 1, so allow 3e-16 * abar_{t-1} plus 1e-15 relative
    prev = np.concatenate(([1.0], s.alphas_cumprod[:-1]))
    err = np.abs(prev * s.alphas - s.alphas_cumprod)
    assert np.all(err <= 1e-15 * s.alphas_cumprod + 3e-16 * prev)


# --------------------------------------------------------------------------- docs


def test_public_methods_have_docstrings_with_examples():
    for name in ["linear", "scaled_linear", "cosine", "from_alphas_cumprod", "from_gammas", "rescale_zero_terminal_snr"]:
        doc = getattr(NoiseSchedule, name).__doc__
        assert doc and ">>> " in doc, name
    assert ">>> " in NoiseSchedule.__doc__
    for name in ARRAY_ATTRIBUTES + ["num_timesteps"]:
        assert getattr(NoiseSchedule, name).__doc__, name
