"""Gradients (VJPs) of the multivariate-normal ops: cholesky, mvn_sample, mvn_logpdf, mvn_kl.

Each VJP (fastgauss.mvn._vjp_<op>, what fastgauss.vjp calls) against torch autograd of the same
formula written in torch (float64, 1e-10 relative to the largest gradient entry) on the numpy
and cpu backends; the reference against central finite differences (one case per op); the cuda
kernels against the reference under the simulator (tiny batches, d = 3 in local arrays and
d = 17 in global scratch); float32 against float64; broadcast forms (a mean shared by the batch,
one covariance for all samples) and summing in several segments; wrt= subsets; the noise of
rng= regenerated from a restored generator.
"""

import numpy as np
import pytest

import fastgauss
from conftest import CUDA_USABLE, assert_same_digest_for_thread_counts, to_backend, to_numpy
from fastgauss import mvn
from fastgauss._plans import mvn as plan

D = 3
RTOL = 1e-10  # against torch autograd, float64, relative to the largest entry of the gradient


def spd(rng, batch, d=D):
    a = rng.standard_normal(tuple(batch) + (d, d))
    return a @ np.swapaxes(a, -1, -2) / d + 0.5 * np.eye(d)


def lower(rng, batch, d=D):
    """Lower factors with a positive diagonal and garbage above it (never read)."""
    return np.linalg.cholesky(spd(rng, batch, d)) + np.triu(rng.standard_normal(tuple(batch) + (d, d)), 1)


def relative_error(got, expected):
    got, expected = np.asarray(to_numpy(got), np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-300))


# --- the cases: (op, cotangent shape, args, kwargs); the torch formula of each op ---------------
# rng= cases draw the noise that fastgauss.default_rng(seed).standard_normal(shape) gives.


def cases(d=D):
    rng = np.random.default_rng(11 + d)
    return {
        "cholesky": ("cholesky", (4, d, d), (spd(rng, (4,), d),), {}),
        "cholesky upper": ("cholesky", (2, d, d), (spd(rng, (2,), d),), {"upper": True}),
        "sample cov, rng": ("mvn_sample", (5, d), (rng.standard_normal((5, d)), spd(rng, (5,), d)), {"rng": 3}),
        "sample cov, noise, shared mean, 3 samples": (
            "mvn_sample", (3, 4, d), (rng.standard_normal(d), spd(rng, (4,), d)), {"noise": rng.standard_normal((3, 4, d))},
        ),
        "sample one cov for all, rng": ("mvn_sample", (6, 2, d), (rng.standard_normal((2, d)), spd(rng, (), d)), {"rng": 5, "size": 6}),
        "sample scale_tril, rng": ("mvn_sample", (2, 3, d), (rng.standard_normal((3, d)),), {"scale_tril": lower(rng, (3,), d), "rng": 7, "size": 2}),
        "sample scale_tril, noise": ("mvn_sample", (4, d), (rng.standard_normal((4, d)),), {"scale_tril": lower(rng, (4,), d), "noise": rng.standard_normal((4, d))}),
        "logpdf": ("mvn_logpdf", (4,), (rng.standard_normal((4, d)), rng.standard_normal((4, d)), spd(rng, (4,), d)), {}),
        "logpdf one cov, shared mean": ("mvn_logpdf", (2, 3), (rng.standard_normal((2, 3, d)), rng.standard_normal(d), spd(rng, (), d)), {}),
        "logpdf scale_tril broadcast": (
            "mvn_logpdf", (2, 3), (rng.standard_normal((2, 1, d)), rng.standard_normal((3, d))), {"scale_tril": lower(rng, (1, 3), d)},
        ),
        "kl": ("mvn_kl", (4,), (rng.standard_normal((4, d)), spd(rng, (4,), d), rng.standard_normal((4, d)), spd(rng, (4,), d)), {}),
        "kl against one": ("mvn_kl", (2, 2), (rng.standard_normal((2, 2, d)), spd(rng, (2, 1), d), rng.standard_normal(d), spd(rng, (), d)), {}),
    }


CASES = cases()
NAMES = {
    "cholesky": ["a"],
    "mvn_sample": ["mean", "cov", "scale_tril", "noise"],
    "mvn_logpdf": ["x", "mean", "cov", "scale_tril"],
    "mvn_kl": ["mean1", "cov1", "mean2", "cov2"],
}


def noise_of(cot_shape, kwargs, dtype=np.float64):
    if "noise" in kwargs:
        return kwargs["noise"]
    return fastgauss.default_rng(kwargs["rng"]).standard_normal(cot_shape, dtype=dtype, backend="numpy")


def torch_formula(torch, op, cot_shape, args, kwargs):
    """(result, {name: leaf tensor}) of the op written in torch, float64."""
    leaves = {}

    def leaf(name, value):
        leaves[name] = torch.tensor(np.asarray(value, np.float64), requires_grad=True)
        return leaves[name]

    def factor(cov):
        return torch.linalg.cholesky(cov)

    def logdet_half(L):
        return torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)

    if op == "cholesky":
        return torch.linalg.cholesky(leaf("a", args[0]), upper=kwargs.get("upper", False)), leaves
    if op == "mvn_sample":
        mean = leaf("mean", args[0])
        L = factor(leaf("cov", args[1])) if len(args) > 1 else torch.tril(leaf("scale_tril", kwargs["scale_tril"]))
        eps = leaf("noise", kwargs["noise"]) if "noise" in kwargs else torch.tensor(noise_of(cot_shape, kwargs))
        return mean + (L @ eps[..., None])[..., 0], leaves
    if op == "mvn_logpdf":
        x, mean = leaf("x", args[0]), leaf("mean", args[1])
        L = factor(leaf("cov", args[2])) if len(args) > 2 else torch.tril(leaf("scale_tril", kwargs["scale_tril"]))
        diff = x - mean
        L = L.expand(diff.shape[:-1] + L.shape[-2:])
        z = torch.linalg.solve_triangular(L, diff[..., None], upper=False)[..., 0]
        return -0.5 * (D * np.log(2 * np.pi) + (z**2).sum(-1)) - logdet_half(L), leaves
    mean1, cov1, mean2, cov2 = (leaf(n, a) for n, a in zip(NAMES["mvn_kl"], args))
    L1, L2 = factor(cov1), factor(cov2)
    shape = torch.broadcast_shapes(mean1.shape[:-1], L1.shape[:-2], mean2.shape[:-1], L2.shape[:-2])
    L1, L2 = L1.expand(shape + L1.shape[-2:]), L2.expand(shape + L2.shape[-2:])
    M = torch.linalg.solve_triangular(L2, L1, upper=False)
    w = torch.linalg.solve_triangular(L2, (mean2 - mean1).expand(shape + (D,))[..., None], upper=False)[..., 0]
    return 0.5 * ((M**2).sum((-2, -1)) + (w**2).sum(-1) - D) + logdet_half(L2) - logdet_half(L1), leaves


def vjp(op, cotangent, args, kwargs, backend, **extra):
    return getattr(mvn, "_vjp_" + op)(cotangent, *args, **kwargs, **extra, backend=backend)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_vjp_equals_torch_autograd_of_the_formula(torch, backend, case):
    op, cot_shape, args, kwargs = CASES[case]
    cotangent = np.random.default_rng(len(case)).standard_normal(cot_shape)
    result, leaves = torch_formula(torch, op, cot_shape, args, kwargs)
    result.backward(torch.tensor(cotangent))
    grads = vjp(op, cotangent, args, kwargs, backend)
    assert sorted(grads) == sorted(leaves)
    for name, leaf in leaves.items():
        assert grads[name].dtype == np.float64
        assert relative_error(grads[name], leaf.grad.numpy()) <= RTOL, name


# --- finite differences (the reference) ---------------------------------------------------------


@pytest.mark.parametrize("case", ["cholesky", "sample cov, noise, shared mean, 3 samples", "logpdf one cov, shared mean", "kl against one"])
def test_reference_vjp_matches_central_differences(case):
    """<cotangent, f(args + h E) - f(args - h E)> / 2h = <gradient, E> for a random direction E,
    symmetric for covariances (the gradient is the symmetric one: only symmetric perturbations
    are covariances)."""
    op, cot_shape, args, kwargs = CASES[case]
    rng = np.random.default_rng(5)
    cotangent = rng.standard_normal(cot_shape)
    arguments = dict(zip(NAMES[op], args), **kwargs)
    grads = vjp(op, cotangent, args, kwargs, "numpy")
    forward = getattr(fastgauss, op)
    for name, gradient in grads.items():
        direction = rng.standard_normal(np.shape(arguments[name]))
        if name in ("a", "cov", "cov1", "cov2"):
            direction = direction + np.swapaxes(direction, -1, -2)
        h = 1e-5

        def objective(sign):
            moved = dict(arguments, **{name: arguments[name] + sign * h * direction})
            positional = [moved.pop(n) for n in NAMES[op][: len(args)]]
            return float(np.sum(cotangent * forward(*positional, **moved, backend="numpy")))

        numeric = (objective(1) - objective(-1)) / (2 * h)
        assert abs(numeric - np.sum(gradient * direction)) <= 1e-7 * max(1.0, abs(numeric)), name


# --- cuda (simulator: tiny batches) and segments ------------------------------------------------


def _on_device(value):
    return to_backend(np.ascontiguousarray(value), "cuda") if isinstance(value, np.ndarray) else value


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
@pytest.mark.parametrize("d", [D, 17])  # 17 > MAX_LOCAL_D: the kernels with global scratch
def test_cuda_vjp_equals_the_reference(d):
    for case, (op, cot_shape, args, kwargs) in cases(d).items():
        if d > D and case not in ("cholesky", "sample cov, noise, shared mean, 3 samples", "logpdf scale_tril broadcast", "kl"):
            continue  # the d = 17 kernels: one case each
        cotangent = np.random.default_rng(len(case)).standard_normal(cot_shape)
        expected = vjp(op, cotangent, args, kwargs, "numpy")
        got = vjp(op, _on_device(cotangent), [_on_device(a) for a in args], {k: _on_device(v) for k, v in kwargs.items()}, "cuda")
        assert sorted(got) == sorted(expected), case
        for name in expected:
            assert relative_error(got[name], expected[name]) <= 1e-12, (case, name)
    for case in ["sample cov, rng", "sample scale_tril, rng"] if d == D else []:  # float32: noise regenerated in float32
        op, cot_shape, args, kwargs = CASES[case]
        cotangent = np.random.default_rng(2).standard_normal(cot_shape).astype(np.float32)
        args32 = [np.asarray(a, np.float32) for a in args]
        kwargs32 = {k: np.asarray(v, np.float32) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        expected = vjp(op, cotangent, args32, kwargs32, "numpy")
        got = vjp(op, _on_device(cotangent), [_on_device(a) for a in args32], {k: _on_device(v) for k, v in kwargs32.items()}, "cuda")
        for name in expected:
            assert got[name].dtype == np.float32 and relative_error(got[name], expected[name]) <= 1e-6, (case, name)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_broadcast_gradients_summed_in_segments(backend, monkeypatch):
    """With segments of two elements, broadcast gradients are summed in several partials (added in
    order, then reversed once per matrix): the same values as in one pass, within rounding."""
    if backend == "cuda" and not CUDA_USABLE:
        pytest.skip("cuda backend not usable")
    monkeypatch.setattr(plan, "SEGMENT", 2)
    assert plan.segments(12) == 6
    device = _on_device if backend == "cuda" else (lambda a: a)
    for case in ["sample one cov for all, rng", "sample cov, noise, shared mean, 3 samples", "sample scale_tril, rng", "logpdf one cov, shared mean", "kl against one"]:
        op, cot_shape, args, kwargs = CASES[case]
        cotangent = np.random.default_rng(1).standard_normal(cot_shape)
        expected = vjp(op, cotangent, args, kwargs, "numpy")
        got = vjp(op, device(cotangent), [device(a) for a in args], {k: device(v) for k, v in kwargs.items()}, backend)
        for name in expected:
            assert relative_error(got[name], expected[name]) <= 1e-12, (case, name)


# --- dtypes, wrt, the generator, errors ---------------------------------------------------------


@pytest.mark.parametrize("case", ["cholesky", "sample cov, rng", "logpdf", "kl"])
def test_float32_gradients_within_1e_5_of_float64(case):
    """float32 arguments give float32 gradients within 1e-5 (relative to the largest entry) of the
    float64 gradients of the same (float32-rounded) values; with rng= the noise is regenerated in
    float32, as the float32 forward drew it (checked against the reference's float32 noise)."""
    op, cot_shape, args, kwargs = CASES[case]
    cotangent = np.random.default_rng(2).standard_normal(cot_shape).astype(np.float32)
    args32 = [np.asarray(a, np.float32) for a in args]
    kwargs32 = {k: np.asarray(v, np.float32) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    got = vjp(op, cotangent, args32, kwargs32, "cpu")
    if "rng" in kwargs:  # float64 of the same float32 noise
        kwargs64 = {k: v for k, v in kwargs.items() if k != "rng"}
        kwargs64["noise"] = noise_of(cot_shape, kwargs, np.float32).astype(np.float64)
    else:
        kwargs64 = {k: np.asarray(v, np.float64) if isinstance(v, np.ndarray) else v for k, v in kwargs32.items()}
    expected = vjp(op, cotangent.astype(np.float64), [a.astype(np.float64) for a in args32], kwargs64, "numpy")
    for name in got:
        assert got[name].dtype == np.float32
        assert relative_error(got[name], expected[name]) <= 1e-5, name


def test_wrt_computes_only_the_gradients_asked_for(monkeypatch):
    from fastgauss.cpu import mvn as cpu_mvn

    seen = []
    backward = cpu_mvn.mvn_sample_vjp

    def spy(*args, **kwargs):
        seen.append(sorted(k for k, v in kwargs.items() if k.startswith("grad_") and v is not None))
        return backward(*args, **kwargs)

    monkeypatch.setattr(cpu_mvn, "mvn_sample_vjp", spy)
    op, cot_shape, args, kwargs = CASES["sample cov, noise, shared mean, 3 samples"]
    cotangent = np.random.default_rng(3).standard_normal(cot_shape)
    everything = vjp(op, cotangent, args, kwargs, "cpu")
    only = vjp(op, cotangent, args, kwargs, "cpu", wrt=["cov"])
    assert sorted(everything) == ["cov", "mean", "noise"] and list(only) == ["cov"]
    assert seen == [["grad_cov", "grad_mean", "grad_noise"], ["grad_cov"]]
    np.testing.assert_array_equal(only["cov"], everything["cov"])
    assert list(vjp(op, cotangent, args, kwargs, "numpy", wrt="mean")) == ["mean"]
    with pytest.raises(ValueError, match="scale_tril"):
        vjp(op, cotangent, args, kwargs, "numpy", wrt=["scale_tril"])


def test_noise_is_regenerated_from_the_restored_generator():
    """The forward's generator, restored to the state it started from, gives the forward's noise in the
    backward (the gradient equals the one with that noise given) and advances as the forward did."""
    op, cot_shape, args, kwargs = CASES["sample cov, rng"]
    generator = fastgauss.default_rng(42)
    start = generator.state
    x = fastgauss.mvn_sample(*args, rng=generator, backend="numpy")  # the same stream as every backend
    after = generator.state
    generator.state = start
    cotangent = np.random.default_rng(4).standard_normal(cot_shape)
    got = vjp(op, cotangent, args, {"rng": generator}, "cpu")
    assert generator.state == after
    noise = np.linalg.solve(np.linalg.cholesky(args[1]), (x - args[0])[..., None])[..., 0]
    expected = vjp(op, cotangent, args, {"noise": noise}, "numpy", wrt=["mean", "cov"])
    for name in expected:
        assert relative_error(got[name], expected[name]) <= 1e-10, name


def test_vjp_errors():
    op, cot_shape, args, kwargs = CASES["logpdf"]
    with pytest.raises(ValueError, match="cotangent must have the result's shape"):
        vjp(op, np.ones(5), args, kwargs, "numpy")
    with pytest.raises(ValueError, match="fresh OS entropy"):
        mvn._vjp_mvn_sample(np.ones((2, D)), np.zeros((2, D)), np.eye(D))
    singular = np.zeros((2, D, D))
    with pytest.raises(np.linalg.LinAlgError, match=r"cov matrix at batch index \(0,\)"):
        mvn._vjp_mvn_logpdf(np.ones(2), np.zeros((2, D)), np.zeros(D), singular, backend="cpu")
    grads = mvn._vjp_mvn_sample(np.ones((0, D)), np.ones(D), np.eye(D), size=0, rng=1, backend="cpu")
    assert np.array_equal(grads["mean"], np.zeros(D)) and np.array_equal(grads["cov"], np.zeros((D, D)))


DIGEST_SCRIPT = """
import hashlib, numpy as np, numba, fastgauss
rng = np.random.default_rng(3)
a = rng.standard_normal((5, 3, 3)); cov = a @ a.swapaxes(-1, -2) / 3 + 0.5 * np.eye(3)
mean = rng.standard_normal((2_001, 3))
digest = hashlib.sha256()
# 10k vectors per covariance and 2k per mean vector: summed in several segments
for grads in (
    fastgauss.mvn._vjp_mvn_sample(rng.standard_normal((5, 2_001, 3)), mean, cov[0], size=5, rng=7),
    fastgauss.mvn._vjp_mvn_kl(rng.standard_normal(2_001), mean, cov[1], mean[0], cov[2]),
    fastgauss.mvn._vjp_mvn_logpdf(rng.standard_normal((5, 2_001)), rng.standard_normal((5, 2_001, 3)), mean, cov[3]),
):
    for name in sorted(grads):
        digest.update(grads[name].tobytes())
print(numba.get_num_threads(), digest.hexdigest())
"""


def test_bitwise_identical_for_any_thread_count():
    """Broadcast gradients are summed in segments fixed by the shapes: the same bits on 1 and 3 threads."""
    assert plan.segments(5 * 2_001) > 1
    assert_same_digest_for_thread_counts(DIGEST_SCRIPT)
