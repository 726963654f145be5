"""CUDA kernels the family tests do not reach, and the block-level code at odd block sizes.

- mvn above MAX_LOCAL_D: the factors live in global memory (_cholesky_global, then
  _sample_global, _logpdf_global, _kl_global), against the reference.
- The KL reductions (shared memory, syncthreads, a tree over the block) launched with
  block sizes that are not a power of two and several blocks per row, against the
  reference, and bitwise reproducible; the atomic-min summary of mvn (_first_flags) over
  several blocks of an odd size.

The simulator runs a block's threads concurrently, so a missing syncthreads can show
here. Small inputs: the simulator executes every thread as Python.
Which kernels the whole suite launches is checked at the end of the session (conftest.py).
"""

import math

import numpy as np
import pytest

import fastgauss
from conftest import CUDA_USABLE, SIMULATOR, to_numpy

pytestmark = pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}  # relative to the largest magnitude involved


def spd(rng, batch, d, jitter=0.5):
    a = rng.standard_normal(tuple(batch) + (d, d))
    return a @ np.swapaxes(a, -1, -2) / d + jitter * np.eye(d)


def dev(*arrays):
    from numba import cuda

    return tuple(cuda.to_device(np.ascontiguousarray(a)) for a in arrays)


def close(got, ref, dtype, scale=1.0):
    ref = np.asarray(ref)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL[dtype] * scale * (1 + np.abs(ref).max()))


# --- mvn with d > MAX_LOCAL_D: factors in global memory -------------------------------------------


def big_d():
    from fastgauss.cuda.mvn import MAX_LOCAL_D

    return MAX_LOCAL_D + 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_mvn_sample_above_max_local_d(dtype):
    d = big_d()
    rng = np.random.default_rng(17)
    mean, cov = rng.standard_normal((3, d)).astype(dtype), spd(rng, (3,), d).astype(dtype)
    tril = np.linalg.cholesky(cov.astype(np.float64)).astype(dtype)
    noise = rng.standard_normal((2, 3, d)).astype(dtype)
    # given noise, cov (factored first) and scale_tril (used as given)
    got = to_numpy(fastgauss.mvn_sample(*dev(mean, cov), noise=dev(noise)[0], size=(2,), backend="cuda"))
    close(got, fastgauss.mvn_sample(mean, cov, noise=noise, size=(2,), backend="numpy"), dtype, d)
    got = to_numpy(fastgauss.mvn_sample(dev(mean)[0], scale_tril=dev(tril)[0], noise=dev(noise)[0], size=(2,), backend="cuda"))
    close(got, fastgauss.mvn_sample(mean, scale_tril=tril, noise=noise, size=(2,), backend="numpy"), dtype, d)
    # generated noise (the stream drawn in place, then mean + L eps), a mean shared by the batch
    got = to_numpy(fastgauss.mvn_sample(*dev(mean[0], cov), rng=9, backend="cuda"))
    close(got, fastgauss.mvn_sample(mean[0], cov, rng=9, backend="numpy"), dtype, 4 * d)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mvn_logpdf_above_max_local_d(dtype):
    d = big_d()
    rng = np.random.default_rng(18)
    x, mean = rng.standard_normal((2, 3, d)).astype(dtype), rng.standard_normal((3, d)).astype(dtype)
    cov = spd(rng, (3,), d).astype(dtype)
    tril = np.linalg.cholesky(cov.astype(np.float64)).astype(dtype)
    got = to_numpy(fastgauss.mvn_logpdf(*dev(x, mean, cov), backend="cuda"))
    close(got, fastgauss.mvn_logpdf(x, mean, cov, backend="numpy"), dtype, d * d)
    got = to_numpy(fastgauss.mvn_logpdf(*dev(x, mean), scale_tril=dev(tril)[0], backend="cuda"))
    close(got, fastgauss.mvn_logpdf(x, mean, scale_tril=tril, backend="numpy"), dtype, d * d)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mvn_kl_above_max_local_d(dtype):
    d = big_d()
    rng = np.random.default_rng(19)
    mean1, mean2 = rng.standard_normal((3, d)).astype(dtype), rng.standard_normal(d).astype(dtype)
    cov1, cov2 = spd(rng, (3,), d).astype(dtype), spd(rng, (), d).astype(dtype)  # cov2 shared by the batch
    got = to_numpy(fastgauss.mvn_kl(*dev(mean1, cov1, mean2, cov2), backend="cuda"))
    close(got, fastgauss.mvn_kl(mean1, cov1, mean2, cov2, backend="numpy"), dtype, d * d)


# --- block-level code at block sizes that are not a power of two -----------------------------------


KL_NAMES = {
    "normal_kl": ("mean1", "logvar1", "mean2", "logvar2"),
    "normal_logpdf": ("x", "mean", "logvar"),
    "discretized_gaussian_log_likelihood": ("x", "means", "log_scales"),
}


def _reduce_on_device(op, arrays, reduce, threads, dtype):
    from numba import cuda

    from fastgauss.cuda import kl

    extra = 1.0 / 255 if op.startswith("discretized") else 0.0
    out = cuda.device_array(arrays[0].shape[0], dtype)
    kl._run(op, KL_NAMES[op], dev(*arrays), extra, arrays[0].shape, reduce, out, threads)
    return out.copy_to_host()


@pytest.mark.parametrize(
    "op, dtype, threads, width, reduce",
    [
        ("normal_kl", np.float64, 96, 200, "sum"),  # 3 blocks of 96 per row
        ("normal_logpdf", np.float32, 200, 450, "mean"),  # 3 blocks of 200, the last one partly idle
        ("discretized_gaussian_log_likelihood", np.float64, 75, 160, "sum"),  # odd: 75 -> 37 -> 19 -> ...
    ],
)
def test_block_reduction_at_odd_block_sizes_matches_reference(op, dtype, threads, width, reduce):
    from fastgauss.cuda import THREADS

    assert threads <= THREADS and threads & (threads - 1) and -(-width // threads) > 1
    rng = np.random.default_rng(threads)
    count = len(KL_NAMES[op])
    arrays = [rng.uniform(-1, 1, (2, width)).astype(dtype) for _ in range(count)]
    got = _reduce_on_device(op, arrays, reduce, threads, dtype)
    ref = getattr(fastgauss, op)(*arrays, reduce=reduce, backend="numpy")
    close(got, ref, dtype, width if reduce == "sum" else 1)
    # bitwise reproducible for a given shape and block size
    np.testing.assert_array_equal(_reduce_on_device(op, arrays, reduce, threads, dtype), got)


def test_first_flags_atomic_min_over_odd_blocks():
    """The device summary of mvn status codes (atomic min), 3 blocks of 100 threads, grid-stride."""
    from numba import cuda

    from fastgauss.cuda.mvn import NONE, _first_flags
    from fastgauss._plans.mvn import summarize

    status = np.zeros(700, np.int32)
    status[[650, 420, 333, 699]] = [3, 2, 5, 1]  # the first failure in block order is not the first found
    status[[610, 250, 251]] = -1
    first = cuda.to_device(np.array([NONE, NONE], np.int64))
    _first_flags[3, 100](cuda.to_device(status), first)
    failed, asymmetric = first.copy_to_host()
    expected = summarize(status)
    assert (failed, status[failed], asymmetric) == expected == (333, 5, 250)



if CUDA_USABLE:
    from numba import cuda, float64

    from fastgauss.cuda import THREADS
    from fastgauss.cuda.kl import block_sum

    @cuda.jit
    def _block_sums(values, out):
        """out[block] = block_sum of the block's values, the shared array poisoned with NaN first."""
        shared = cuda.shared.array(THREADS, float64)
        for i in range(cuda.threadIdx.x, THREADS, cuda.blockDim.x):
            shared[i] = math.nan
        cuda.syncthreads()
        total = block_sum(shared, values[cuda.grid(1)])
        if cuda.threadIdx.x == 0:
            out[cuda.blockIdx.x] = total


def test_block_sum_for_every_kind_of_block_size():
    """block_sum alone, the unused shared slots poisoned with NaN first (on a GPU they hold
    whatever ran before; the simulator's are often zero, which would hide a tree that reads
    past blockDim): exact integer sums for block sizes 1 .. THREADS, two blocks each."""
    for threads in (1, 3, 96, 200, 255):
        values = np.arange(1, 2 * threads + 1, dtype=np.float64)
        out = cuda.device_array(2, np.float64)
        _block_sums[2, threads](cuda.to_device(values), out)
        expected = [values[:threads].sum(), values[threads:].sum()]
        np.testing.assert_array_equal(out.copy_to_host(), expected, err_msg=f"{threads} threads")


def test_constants_are_cached_by_content_and_placeholders_are_kept(monkeypatch):
    """fastgauss.cuda.constant: one device copy per (device, dtype, shape, bytes), reused by a later
    call with equal contents, never for different ones; large arrays are copied each time.
    A repeated op call with the same timesteps copies no table (and computes the same values)."""
    from numba import cuda

    from fastgauss.cuda import CONSTANT_MAX_BYTES, constant, placeholder

    a = np.arange(5.0)
    first = constant(a)
    assert constant(a.copy()) is first
    np.testing.assert_array_equal(first.copy_to_host(), a)
    assert constant(a.astype(np.float32)) is not first
    assert constant(a.reshape(1, 5)) is not first
    assert constant(a + 1e-300) is not first and constant(np.r_[a, 0.0]) is not first
    big = np.zeros(CONSTANT_MAX_BYTES // 8 + 1)
    assert constant(big) is not constant(big)
    assert placeholder((1, 1), np.float32) is placeholder((1, 1), np.float32)
    assert placeholder((1, 1), np.float32) is not placeholder((1, 1), np.float64)
    x0, noise = (cuda.to_device(np.random.default_rng(i).standard_normal((3, 8))) for i in (0, 1))
    t = np.array([1, 20, 39])
    schedule = fastgauss.NoiseSchedule.linear(40)
    t_device = cuda.to_device(t)
    before = fastgauss.q_sample(x0, t_device, schedule, noise).copy_to_host()
    uploads, real_to_device = [], cuda.to_device
    monkeypatch.setattr(cuda, "to_device", lambda *a, **k: uploads.append(a) or real_to_device(*a, **k))
    again = fastgauss.q_sample(x0, t_device, schedule, noise).copy_to_host()
    monkeypatch.undo()
    assert uploads == []
    other = fastgauss.q_sample(x0, cuda.to_device(t[::-1].copy()), schedule, noise).copy_to_host()
    np.testing.assert_array_equal(before, again)
    reference = fastgauss.q_sample(x0.copy_to_host(), t[::-1].copy(), schedule, noise.copy_to_host(), backend="numpy")
    np.testing.assert_allclose(other, reference, rtol=1e-14)


@pytest.mark.skipif(not SIMULATOR, reason="records the simulator's launches and transfers")
def test_launches_and_transfers_follow_the_launch_stream(monkeypatch):
    """Under use_stream (what the torch adapter sets to torch's current stream), every kernel
    launch and every small host <-> device transfer of an op is made on that stream: a copy on
    the legacy default stream is not ordered with a non-blocking stream's kernels (torch's)."""
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    from fastgauss.cuda import use_stream

    seen = []  # (what, stream)
    getitem, to_device = FakeCUDAKernel.__getitem__, cuda.to_device
    to_host, copy_in = FakeCUDAArray.copy_to_host, FakeCUDAArray.copy_to_device

    def record(what, original):
        def wrapper(*args, stream=0, **kwargs):
            seen.append((what, stream))
            return original(*args, stream=stream, **kwargs)

        return wrapper

    def launch(self, configuration):
        seen.append((f"launch {self.fn.__name__}", configuration[2] if len(configuration) > 2 else 0))
        return getitem(self, configuration)

    rng = np.random.default_rng(0)
    x, noise = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    cov = spd(rng, (2,), 3)
    args = dev(x, noise, np.array([1, 30]), x[:, 0, :3], cov, np.eye(3)[:2], np.eye(2), np.zeros((2, 2)))
    stream = cuda.stream()
    monkeypatch.setattr(FakeCUDAKernel, "__getitem__", launch)
    monkeypatch.setattr(cuda, "to_device", record("to_device", to_device))
    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", record("copy_to_host", to_host))
    monkeypatch.setattr(FakeCUDAArray, "copy_to_device", record("copy_to_device", copy_in))
    schedule = fastgauss.NoiseSchedule.linear(40)
    with use_stream(stream):
        fastgauss.q_sample(args[0], args[2], schedule, rng=1, backend="cuda")
        fastgauss.vjp("q_sample", args[0], args[0], args[2], schedule, args[1], backend="cuda")
        fastgauss.normal_kl(args[0], 0.0, args[1], 0.5, reduce="mean", backend="cuda")
        fastgauss.mvn_sample(args[3], args[4], rng=2, backend="cuda")
        fastgauss.kalman_update(*args[3:], backend="cuda")
    kinds = {what.split()[0] for what, _ in seen}
    assert {"launch", "to_device", "copy_to_host"} <= kinds, kinds  # the check reaches all three
    assert [item for item in seen if item[1] is not stream] == []


# --- the GPU's bits are the CPU's ------------------------------------------------------------------


def _bits(a):
    a = to_numpy(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _same_bits_cases(dtype):
    """(name, function of the backend): each op on cuda and on cpu from the same inputs."""
    # On a GPU: 7,077,888 values, rows of 1,769,472 (past several grid strides of every kernel); the
    # simulator runs every thread as Python, so there a few hundred values.
    shape = (4, 3, 5, 7) if SIMULATOR else (4, 3, 768, 768)
    rng = np.random.default_rng(5)
    t = rng.integers(1, 1000, shape[0])
    arrays = {k: rng.standard_normal(shape).astype(dtype) for k in ("x0", "eps", "noise")}
    arrays.update(t=t, t_prev=t - 1)
    on = {"cpu": arrays, "cuda": dict(zip(arrays, dev(*arrays.values())))}
    n = int(np.prod(shape))
    schedule = fastgauss.NoiseSchedule.cosine(1000)
    return {
        "standard_normal": lambda b: fastgauss.default_rng(20261126).standard_normal(n, dtype, backend=b),
        "normal": lambda b: fastgauss.default_rng(8).normal(0.25, 3.0, n, dtype, backend=b),
        "random": lambda b: fastgauss.default_rng(9).random(n, dtype, backend=b),
        "q_sample given noise": lambda b: fastgauss.q_sample(on[b]["x0"], on[b]["t"], schedule, on[b]["noise"]),
        "q_sample drawn noise": lambda b: fastgauss.q_sample(on[b]["x0"], on[b]["t"], schedule, rng=11),
        "predict_x0": lambda b: fastgauss.predict_x0(on[b]["x0"], on[b]["t"], on[b]["eps"], schedule),
        "ddpm_step drawn noise": lambda b: fastgauss.ddpm_step(on[b]["eps"], on[b]["x0"], on[b]["t"], schedule, rng=12),
        "ddim_step eta=0.5, clip": lambda b: fastgauss.ddim_step(
            on[b]["eps"], on[b]["x0"], on[b]["t"], on[b]["t_prev"], schedule, eta=0.5, clip=1.0, noise=on[b]["noise"]
        ),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_gpu_gives_the_cpus_bits(dtype):
    """The noise and the diffusion ops, bit for bit. On a GPU this is what holds
    fastgauss.cuda.rounded_product to its job (NVVM fuses a plain a * b + c into one FMA, where the
    CPU rounds twice; ci/cuda_compile.py also checks the PTX for fused products); under the
    simulator it checks that both backends evaluate the same expressions."""
    for name, function in _same_bits_cases(dtype).items():
        gpu, cpu = _bits(function("cuda")), _bits(function("cpu"))
        differ = int(np.count_nonzero(gpu != cpu))
        assert differ == 0, f"{name} {np.dtype(dtype).name}: {differ} of {cpu.size} values differ"
