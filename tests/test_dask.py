"""Dask arrays in, lazy Dask arrays out (issue 13), on real schedulers.

Every result is compared with the in-memory call on the same data and generator state:
bitwise for elementwise ops and for noise (several chunkings, including chunks of one
element along the last axis, which split Box-Muller pairs and Philox blocks), within
1e-12 (float64) / 1e-6 (float32) relative for per-sample reductions, which are also
bitwise identical run to run. Schedulers: synchronous, threads, and dask.distributed's
LocalCluster with 2 worker processes (started once for the module).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask[array] is not installed (pip install fastgauss[dask])")
distributed = pytest.importorskip("distributed", reason="distributed is not installed (pip install fastgauss[dask])")

import fastgauss  # noqa: E402

SHAPE = (4, 3, 10)
CHUNKINGS = [(4, 3, 10), (4, 3, 1), (3, 2, 3), (1, 3, 10)]  # whole; one element along the last axis; odd splits; samples
SCHEDULE = fastgauss.NoiseSchedule.linear(100)
T = np.array([0, 3, 50, 99])
SCHEDULERS = ["synchronous", "threads", "distributed"]


@pytest.fixture(scope="module")
def client():
    """A LocalCluster with 2 worker processes (one thread each); the workers inherit
    NUMBA_CACHE_DIR, so they load the kernels this process compiled."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(params=SCHEDULERS)
def compute(request):
    """compute(*lazy arrays) -> NumPy results on one scheduler."""
    if request.param == "distributed":
        c = request.getfixturevalue("client")
        return lambda *arrays: tuple(c.compute(list(arrays), sync=True))
    import dask

    return lambda *arrays: dask.compute(*arrays, scheduler=request.param)


def data(dtype=np.float32, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def fresh(seed=7):
    return fastgauss.default_rng(seed)


# --- noise: bitwise chunking invariance, and the generator advances as in memory ---------------


def test_generator_arrays_do_not_depend_on_chunking(compute):
    expected, lazy = {}, []
    for dtype in (np.float32, np.float64):
        for method in ("standard_normal", "random", "normal"):
            args = (0.5, np.linspace(1, 2, SHAPE[-1])) if method == "normal" else ()
            g = fresh()
            expected[method, dtype] = getattr(g, method)(*args, size=SHAPE, dtype=dtype)
            state = g.state
            for chunks in CHUNKINGS:
                g = fresh()
                x = getattr(g, method)(*args, size=SHAPE, dtype=dtype, chunks=chunks)
                assert isinstance(x, da.Array) and x.chunks == da.core.normalize_chunks(chunks, SHAPE)
                assert g.state == state  # advanced when the graph is built, exactly as in memory
                lazy.append((method, dtype, chunks, x))
    results = compute(*[x for *_, x in lazy])
    for (method, dtype, chunks, _), result in zip(lazy, results):
        assert result.dtype == dtype
        np.testing.assert_array_equal(result, expected[method, dtype], err_msg=f"{method} {np.dtype(dtype)} chunks {chunks}")


def test_noise_drawn_in_the_kernels_does_not_depend_on_chunking(compute):
    x0 = data()
    model = data(seed=1)
    expected = {
        "q_sample": fastgauss.q_sample(x0, T, SCHEDULE, rng=fresh(), return_noise=True),
        "ddpm_step": fastgauss.ddpm_step(model, x0, T, SCHEDULE, rng=fresh()),
        "ddim_step": fastgauss.ddim_step(model, x0, T, T - 1, SCHEDULE, eta=1.0, rng=fresh()),
    }
    lazy = []
    for chunks in CHUNKINGS:
        x0_d, model_d = da.from_array(x0, chunks=chunks), da.from_array(model, chunks=chunks)
        t_d = da.from_array(T, chunks=(chunks[0],))  # t may be a Dask array chunked like the batch
        g = fresh()
        xt, noise = fastgauss.q_sample(x0_d, t_d, SCHEDULE, rng=g, return_noise=True)
        assert g.state == fresh().state | {"counter": fastgauss.random.blocks_needed(x0.size, np.float32)}
        assert xt.chunks == x0_d.chunks
        lazy += [("q_sample", chunks, 0, xt), ("q_sample", chunks, 1, noise)]
        lazy.append(("ddpm_step", chunks, None, fastgauss.ddpm_step(model_d, x0_d, T, SCHEDULE, rng=fresh())))
        lazy.append(("ddim_step", chunks, None, fastgauss.ddim_step(model_d, x0_d, t_d, T - 1, SCHEDULE, eta=1.0, rng=fresh())))
    results = compute(*[x for *_, x in lazy])
    for (op, chunks, pick, _), result in zip(lazy, results):
        want = expected[op] if pick is None else expected[op][pick]
        np.testing.assert_array_equal(result, want, err_msg=f"{op} chunks {chunks}")


def test_mvn_sample_noise_does_not_depend_on_chunking(compute):
    rng = np.random.default_rng(3)
    mean = rng.standard_normal((6, 3))
    a = rng.standard_normal((6, 3, 3))
    cov = a @ a.transpose(0, 2, 1) + np.eye(3)
    expected = fastgauss.mvn_sample(mean, cov, size=2, rng=fresh())
    lazy = []
    for rows in (1, 4, 6):
        g = fresh()
        x = fastgauss.mvn_sample(da.from_array(mean, chunks=(rows, 3)), da.from_array(cov, chunks=(rows, 3, 3)), size=2, rng=g)
        assert g.state["counter"] == fastgauss.random.blocks_needed(expected.size, np.float64)
        lazy.append(x)
    for result in compute(*lazy):
        np.testing.assert_array_equal(result, expected)


# --- reductions --------------------------------------------------------------------------------------


def test_per_sample_reductions_match_in_memory_and_repeat_bitwise(compute):
    lazy, expected = [], []
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        mean1, mean2 = data(dtype), data(dtype, seed=1)
        logvar = (data(dtype, shape=SHAPE[1:], seed=2) * 0.1).astype(dtype)  # broadcast without the batch axis
        calls = [
            ("normal_kl", (mean1, logvar, mean2, 0.0)),
            ("normal_logpdf", (mean1, mean2, logvar)),
            ("discretized_gaussian_log_likelihood", (np.clip(mean1, -1, 1), mean2, logvar)),
        ]
        if dtype == np.float32:  # float32: one op (each op and dtype is one more kernel to compile)
            calls = calls[:1]
        for chunks in CHUNKINGS[1:]:  # split samples (a tree sum), and whole samples (one task a block)
            for op, args in calls:
                for reduce in ("mean", "sum"):
                    dask_args = [da.from_array(a, chunks=chunks) if isinstance(a, np.ndarray) and a.ndim == 3 else a for a in args]
                    lazy.append(getattr(fastgauss, op)(*dask_args, reduce=reduce))
                    expected.append((op, chunks, reduce, rtol, getattr(fastgauss, op)(*args, reduce=reduce)))
    first, second = compute(*lazy), compute(*lazy)
    for (op, chunks, reduce, rtol, want), got, again in zip(expected, first, second):
        assert got.dtype == want.dtype and got.shape == want.shape == (SHAPE[0],)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=f"{op} {reduce} {want.dtype} chunks {chunks}")
        np.testing.assert_array_equal(got, again)  # the same graph sums in the same order
        if tuple(chunks[1:]) == SHAPE[1:]:  # whole samples in every block: the kernel's own per-sample sums
            np.testing.assert_array_equal(got, want, err_msg=f"{op} {reduce} {want.dtype} chunks {chunks}")


# --- everything else: elementwise ops keep chunks and equal the in-memory call bitwise ---------------


def test_elementwise_ops_keep_chunks_and_match():
    x, y = data(), data(seed=1)
    chunks = (3, 2, 3)
    xd, yd = da.from_array(x, chunks=chunks), da.from_array(y, chunks=chunks)
    for op in ("predict_x0", "predict_eps", "predict_v", "v_to_x0", "v_to_eps", "posterior_mean_from_eps"):
        order = (lambda u, w: (u, w, T)) if op == "predict_v" else (lambda u, w: (u, T, w))  # predict_v(x0, eps, t, ...)
        lazy = getattr(fastgauss, op)(*order(xd, y), SCHEDULE)
        assert lazy.chunks == xd.chunks
        np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), getattr(fastgauss, op)(*order(x, y), SCHEDULE), err_msg=op)
    for lazy_part, part in zip(fastgauss.q_posterior(xd, yd, 5, SCHEDULE), fastgauss.q_posterior(x, y, 5, SCHEDULE)):
        np.testing.assert_array_equal(lazy_part.compute(scheduler="synchronous"), part)
    lazy = fastgauss.q_sample(xd, T, SCHEDULE, noise=yd)
    np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), fastgauss.q_sample(x, T, SCHEDULE, noise=y))
    elementwise = fastgauss.normal_kl(xd, 0.0, y, np.zeros(SHAPE[-1], np.float32))
    assert elementwise.chunks == xd.chunks
    np.testing.assert_array_equal(elementwise.compute(scheduler="synchronous"), fastgauss.normal_kl(x, 0.0, y, np.zeros(SHAPE[-1], np.float32)))


def test_mvn_ops_on_dask_arrays():
    rng = np.random.default_rng(4)
    mean = rng.standard_normal((6, 3))
    a = rng.standard_normal((6, 3, 3))
    cov = a @ a.transpose(0, 2, 1) + np.eye(3)
    md, cd = da.from_array(mean, chunks=(4, 3)), da.from_array(cov, chunks=(4, 3, 3))
    np.testing.assert_array_equal(fastgauss.cholesky(cd).compute(scheduler="synchronous"), fastgauss.cholesky(cov))
    np.testing.assert_array_equal(fastgauss.mvn_logpdf(md * 0, md, cd).compute(scheduler="synchronous"), fastgauss.mvn_logpdf(mean * 0, mean, cov))
    np.testing.assert_array_equal(fastgauss.mvn_kl(md, cd, 0 * mean, np.eye(3)).compute(scheduler="synchronous"), fastgauss.mvn_kl(mean, cov, 0 * mean, np.eye(3)))


# --- errors: at graph time when shapes and dtypes show them; from a worker with fastgauss's message ------


# --- ops whose results are tuples, and the training objective (issue 13) ------------------------------


@pytest.fixture(params=["synchronous", "threads"])
def compute_local(request):
    """compute(*lazy arrays) on the in-process schedulers."""
    import dask

    return lambda *arrays: dask.compute(*arrays, scheduler=request.param)


def gaussians(batch, d, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(batch + (d, d))
    return rng.standard_normal(batch + (d,)), a @ np.swapaxes(a, -1, -2) + np.eye(d)


def algebra_calls():
    """(op, NumPy arguments, index (a constant) or None): batch (6,) or (2, 3), d = 3, some
    arguments broadcast (no batch axes, or batch axes of length 1)."""
    mean, cov = gaussians((6,), 3, 10)
    mean2, cov2 = gaussians((2, 3), 3, 11)
    rng = np.random.default_rng(12)
    A, b, y = rng.standard_normal((2, 3)), rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    R = np.array([[0.5, 0.1], [0.1, 0.7]])
    return [
        ("mvn_affine", {"mean": mean, "cov": cov, "A": A, "b": b}),
        ("mvn_marginal", {"mean": mean, "cov": cov, "index": [2, 0]}),
        ("mvn_condition", {"mean": mean, "cov": cov, "index": [1], "value": y[:, :1]}),
        ("gaussian_product", {"mean1": mean2, "cov1": cov2, "mean2": mean2[:1, ::-1], "cov2": cov2[:1, ::-1]}),
        ("kalman_update", {"mean": mean, "cov": cov, "H": rng.standard_normal((2, 3)), "R": R, "y": y}),
    ]


def rows(array, chunk):
    """A Dask array of ``array`` chunked by ``chunk`` along its first axis (whole elsewhere)."""
    return da.from_array(array, chunks=(chunk,) + array.shape[1:])


@pytest.mark.parametrize("chunk", [1, 4])
def test_gaussian_algebra_matches_in_memory_bitwise(compute_local, chunk):
    lazy, expected = [], []
    for op, kwargs in algebra_calls():
        # the first argument (its batch chunked by ``chunk``) and the covariance of the first Gaussian are Dask arrays
        first, matrix = list(kwargs)[0], list(kwargs)[1]
        dask_kwargs = dict(kwargs, **{first: rows(kwargs[first], chunk), matrix: rows(kwargs[matrix], chunk)})
        results = getattr(fastgauss, op)(**dask_kwargs)
        want = getattr(fastgauss, op)(**kwargs)
        assert isinstance(results, tuple) and len(results) == len(want)
        for part, (got, w) in enumerate(zip(results, want)):
            assert isinstance(got, da.Array) and got.shape == w.shape and got.dtype == w.dtype, (op, part)
            assert got.chunks[0] == rows(kwargs[first], chunk).chunks[0]  # the batch keeps its chunks
        lazy += results
        expected += [(op, part, w) for part, w in enumerate(want)]
    for (op, part, want), got in zip(expected, compute_local(*lazy)):
        np.testing.assert_array_equal(got, want, err_msg=f"{op} result {part} chunk {chunk}")


def test_gaussian_product_on_a_cluster(client):
    mean, cov = gaussians((6,), 3, 13)
    lazy = fastgauss.gaussian_product(rows(mean, 2), rows(cov, 4), mean[::-1], cov[::-1])
    for got, want in zip(client.compute(list(lazy), sync=True), fastgauss.gaussian_product(mean, cov, mean[::-1], cov[::-1])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normal_product_matches_in_memory_bitwise(compute_local, dtype):
    mean1, mean2 = data(dtype), data(dtype, seed=1)
    logvar = data(dtype, shape=SHAPE[1:], seed=2)  # broadcasts without the batch axis
    want = fastgauss.normal_product(mean1, logvar, mean2, 0.5)
    lazy = []
    for chunks in CHUNKINGS[2:]:  # odd splits; one sample per chunk
        results = fastgauss.normal_product(da.from_array(mean1, chunks=chunks), logvar, da.from_array(mean2, chunks=chunks), 0.5)
        assert all(r.chunks == da.core.normalize_chunks(chunks, SHAPE) and r.dtype == dtype for r in results)
        lazy += results
    for i, got in enumerate(compute_local(*lazy)):
        np.testing.assert_array_equal(got, want[i % 3], err_msg=f"result {i % 3} chunks {CHUNKINGS[2 + i // 3]}")


def objective_calls(dtype=np.float64):
    """(op, arguments, options): data (4, 3, 10), t (4,). float64 only (float32 per-sample sums are
    the KL family's path, tested above; each objective kernel and dtype costs seconds to compile)."""
    x0 = np.clip(data(dtype, seed=20), -1, 1)
    eps, model, v = data(dtype, seed=21), data(dtype, seed=22), np.tanh(data(dtype, seed=23))
    xt = fastgauss.q_sample(x0, T, SCHEDULE, noise=eps)
    return [
        ("model_log_variance", (v, T, SCHEDULE), {"kind": "learned_range"}),
        ("model_log_variance", (v, T, SCHEDULE), {"kind": "fixed_large"}),
        ("vlb_terms", (x0, xt, T, model, SCHEDULE), {"var_output": v, "clip": 1.0}),
        ("prior_bpd", (x0, SCHEDULE), {}),
        ("diffusion_loss", (model, x0, eps, T, SCHEDULE), {"prediction": "v", "weighting": "min_snr"}),
        ("hybrid_loss", (model, v, x0, eps, T, SCHEDULE), {}),
    ]


def to_dask(args, chunks, t_dask):
    """The data arguments as Dask arrays of ``chunks``; T as a Dask array chunked like the batch, or left NumPy."""
    out = []
    for a in args:
        if a is T:
            out.append(da.from_array(T, chunks=(chunks[0],)) if t_dask else T)
        elif isinstance(a, np.ndarray):
            out.append(da.from_array(a, chunks=chunks))
        else:
            out.append(a)
    return out


def test_objective_matches_in_memory(compute_local):
    """Elementwise (reduce=None) bitwise; per sample ("mean", "sum", prior_bpd) within 1e-12 relative."""
    lazy, expected = [], []
    for chunks, t_dask in ((CHUNKINGS[3], True), (CHUNKINGS[2], False)):  # one sample per chunk; odd splits
        for op, args, options in objective_calls():
            # model_log_variance is elementwise and prior_bpd a per-sample mean: neither takes reduce
            reduces = {"model_log_variance": [{}], "prior_bpd": [{"prior": "mean"}]}.get(op, [{"reduce": r} for r in (None, "mean", "sum")])
            for reduce in reduces:
                kwargs = dict(options, **{k: v for k, v in reduce.items() if k == "reduce"})
                lazy.append(getattr(fastgauss, op)(*to_dask(args, chunks, t_dask), **kwargs))
                want = getattr(fastgauss, op)(*args, **kwargs)
                assert lazy[-1].shape == want.shape and lazy[-1].dtype == want.dtype, op
                expected.append((f"{op} {kwargs} chunks {chunks}", any(reduce.values()), want))
    for (label, reduced, want), got in zip(expected, compute_local(*lazy)):
        if not reduced:
            np.testing.assert_array_equal(got, want, err_msg=label)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=label)


def test_all_results_of_a_tuple_op_run_it_once_per_block(monkeypatch):
    import dask

    launches = []

    def counting(implementation):
        def wrapped(op, backend):
            kernel = implementation(op, backend)
            return lambda *args, **kwargs: (launches.append(op), kernel(*args, **kwargs))[1]

        return wrapped

    for module in (fastgauss.mvn, fastgauss.kl, fastgauss.diffusion):
        monkeypatch.setattr(module, "implementation", counting(module.implementation))
    mean, cov = gaussians((6,), 3, 14)
    x = data(np.float64)
    x_d = da.from_array(x, chunks=(2, 3, 5))  # 4 blocks
    built = {
        "kalman_update": fastgauss.kalman_update(rows(mean, 2), cov, np.eye(3)[:2], np.eye(2), np.ones((6, 2))),  # 3 blocks
        "normal_product": fastgauss.normal_product(x_d, 0.0, x, 0.0),
        "q_sample": fastgauss.q_sample(x_d, T, SCHEDULE, rng=fresh(), return_noise=True),
        "ddpm_step": fastgauss.ddpm_step(x_d, x_d, T, SCHEDULE, rng=fresh(), return_x0=True),
        "ddim_step": fastgauss.ddim_step(x_d, x_d, T, T - 1, SCHEDULE, return_x0=True),
    }
    in_memory = {
        "q_sample": fastgauss.q_sample(x, T, SCHEDULE, rng=fresh(), return_noise=True),
        "ddpm_step": fastgauss.ddpm_step(x, x, T, SCHEDULE, rng=fresh(), return_x0=True),
        "ddim_step": fastgauss.ddim_step(x, x, T, T - 1, SCHEDULE, return_x0=True),
    }
    for op, results in built.items():
        for scheduler in ("synchronous", "threads"):
            launches.clear()
            computed = dask.compute(*results, scheduler=scheduler)
            assert launches == [op] * results[0].npartitions, (op, scheduler, launches)
            for got, want in zip(computed, in_memory.get(op, ())):
                np.testing.assert_array_equal(got, want, err_msg=op)


def test_algebra_needs_each_arguments_trailing_axes_in_one_chunk():
    mean, cov = gaussians((6,), 4, 15)
    with pytest.raises(ValueError, match=r"mvn_affine needs the trailing \(k, d\) axes of A in one chunk.*A.rechunk\(\{1: -1\}\)"):
        fastgauss.mvn_affine(mean, cov, da.zeros((3, 4), chunks=(3, 2)))
    with pytest.raises(ValueError, match=r"kalman_update needs the trailing \(k,\) axes of y in one chunk"):
        fastgauss.kalman_update(mean, cov, np.eye(4)[:2], np.eye(2), da.zeros((6, 2), chunks=(3, 1)))


def test_tuple_and_objective_errors_are_raised_when_the_graph_is_built():
    """The in-memory call's messages, raised by the call that builds the graph."""
    mean, cov = gaussians((6,), 3, 16)
    md, cd = rows(mean, 2), rows(cov, 2)
    x = da.zeros(SHAPE, chunks=2)
    cases = [
        (ValueError, r"A must have shape \(\.\.\., k, 3\) \(d = 3 from mean\); got \(2, 4\)$", lambda: fastgauss.mvn_affine(md, cd, np.zeros((2, 4)))),
        (ValueError, r"batch shapes of mean \(6,\), cov \(6,\), A \(5,\) do not broadcast", lambda: fastgauss.mvn_affine(md, cd, np.zeros((5, 2, 3)))),
        (ValueError, r"index must be in \[-3, 3\)", lambda: fastgauss.mvn_marginal(md, cd, [3])),
        (TypeError, "index cannot be a Dask array", lambda: fastgauss.mvn_marginal(md, cd, da.from_array(np.array([1])))),
        (ValueError, r"value must have shape \(\.\.\., 1\) \(d = 1 from index\); got \(6, 2\)$", lambda: fastgauss.mvn_condition(md, cd, [1], np.zeros((6, 2)))),
        (TypeError, "unsupported dtype complex128 for mean1", lambda: fastgauss.gaussian_product(md.astype(complex), cd, mean, cov)),
        (ValueError, "shapes do not broadcast together", lambda: fastgauss.normal_product(x, 0.0, da.zeros((4, 2, 10), chunks=2), 0.0)),
        (ValueError, "kind must be one of", lambda: fastgauss.model_log_variance(x, T, SCHEDULE, kind="large")),
        (ValueError, r"model_output must have the shape of x0 \(4, 3, 10\)", lambda: fastgauss.vlb_terms(x, x, T, x[..., :9], SCHEDULE)),
        (ValueError, "reduce must be None", lambda: fastgauss.diffusion_loss(x, x, x, T, SCHEDULE, reduce="max")),
        (ValueError, "hybrid_loss needs var_output", lambda: fastgauss.hybrid_loss(x, None, x, x, T, SCHEDULE)),
        (ValueError, r"t must be in \[0, 100\)", lambda: fastgauss.diffusion_loss(x, x, x, T + 1, SCHEDULE)),
    ]
    for error, message, build in cases:  # raised by the call that builds the graph: nothing is computed
        with pytest.raises(error, match=message):
            build()
    with pytest.raises(TypeError, match="nll_bpd does not take Dask arrays"):
        fastgauss.nll_bpd(lambda xt, t: xt, x, SCHEDULE, rng=0, progress=False)


def test_mvn_needs_the_trailing_axes_in_one_chunk():
    mean = da.zeros((6, 4), chunks=(3, 2))
    with pytest.raises(ValueError, match=r"trailing \(d,\) axes of mean in one chunk"):
        fastgauss.mvn_sample(mean, np.eye(4), rng=0)
    with pytest.raises(ValueError, match=r"trailing \(d, d\) axes of cov in one chunk"):
        fastgauss.mvn_logpdf(np.zeros((6, 4)), np.zeros(4), da.zeros((6, 4, 4), chunks=(3, 4, 2)))


def test_shape_and_dtype_errors_are_raised_when_the_graph_is_built():
    x = da.zeros(SHAPE, chunks=2, dtype=np.float32)
    g = fresh()
    with pytest.raises(ValueError, match="noise"):
        fastgauss.q_sample(x, T, SCHEDULE, noise=np.zeros((4, 3, 9), np.float32))
    with pytest.raises(ValueError, match=r"t must be in \[0, 100\)"):
        fastgauss.q_sample(x, np.array([0, 1, 2, 100]), SCHEDULE, rng=g)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        fastgauss.q_sample(x, da.zeros(3, dtype=int, chunks=1), SCHEDULE, rng=g)
    with pytest.raises(TypeError):
        fastgauss.predict_x0(x.astype(np.complex64), 3, x, SCHEDULE)
    with pytest.raises(ValueError, match="broadcast"):
        fastgauss.normal_kl(x, 0.0, da.zeros((4, 2, 10), chunks=2), 0.0)
    with pytest.raises(ValueError, match="reduce"):
        fastgauss.normal_kl(x, 0.0, x, 0.0, reduce="max")
    with pytest.raises(TypeError, match="out="):
        fastgauss.predict_x0(x, 3, x, SCHEDULE, out=np.empty(SHAPE, np.float32))
    unknown = x[x[:, 0, 0] > -1]  # chunk sizes unknown (NaN) until computed
    with pytest.raises(ValueError, match=r"noise has unknown chunk sizes.*noise.compute_chunk_sizes\(\)"):
        fastgauss.q_sample(x, T, SCHEDULE, noise=unknown)
    with pytest.raises(ValueError, match=r"mean2 has unknown chunk sizes"):
        fastgauss.normal_kl(x, 0.0, unknown, 0.0)
    assert g.state == fresh().state  # no stream was reserved by a failed call


def test_an_error_in_a_worker_reaches_the_caller(client):
    x = da.zeros(SHAPE, chunks=(2, 3, 10), dtype=np.float32)
    t = da.from_array(np.array([0, 1, 2, 500]), chunks=2)  # values are known only in the workers
    lazy = fastgauss.q_sample(x, t, SCHEDULE, rng=fresh())
    with pytest.raises(ValueError, match=r"t must be in \[0, 100\); t\[1\] = 500"):
        client.compute(lazy, sync=True)


def test_import_fastgauss_does_not_import_dask():
    code = "import sys, fastgauss; fastgauss.default_rng(0); assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules), 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generator_argument_errors_are_raised_when_the_graph_is_built():
    g = fresh()
    with pytest.raises(TypeError, match="Unsupported dtype"):
        g.standard_normal(10, dtype=np.int32, chunks=5)
    with pytest.raises(ValueError, match="scale < 0"):
        g.normal(0.0, np.array([1.0, -1.0]), size=(3, 2), chunks=1)
    with pytest.raises(ValueError, match="do not broadcast"):
        g.normal(np.zeros(3), 1.0, size=(3, 2), chunks=1)
    assert g.state == fresh().state


def test_raw_philox_blocks():
    counters = np.arange(6 * 4, dtype=np.uint32).reshape(6, 4)
    keys = np.array([[1, 2]], dtype=np.uint32)
    lazy = fastgauss.random.philox4x32_10(da.from_array(counters, chunks=(4, 2)), keys)
    assert lazy.chunks[0] == (4, 2)
    np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), fastgauss.random.philox4x32_10(counters, keys))
