"""Backend resolution, host/device rules, host data in either byte order, the reference module, and lazy imports."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import fastgauss
from fastgauss import _dispatch
from conftest import CUDA_USABLE

SCHEDULE = fastgauss.NoiseSchedule.linear(10)
X0 = np.ones((2, 3))


@pytest.fixture
def record_backend(monkeypatch):
    """Record which backend each q_sample call resolves to, without running it."""
    chosen = []
    monkeypatch.setattr(fastgauss.diffusion, "implementation", lambda op, name: lambda *args: chosen.append(name))
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    yield chosen
    fastgauss.set_backend(None)


def call(**kwargs):
    fastgauss.q_sample(X0, 1, SCHEDULE, X0, **kwargs)


def test_resolution_order(record_backend, monkeypatch):
    call()
    assert record_backend[-1] == "cpu"  # auto with host arrays
    monkeypatch.setenv(_dispatch.ENV_VAR, "numpy")
    call()
    assert record_backend[-1] == "numpy"  # environment variable beats auto
    fastgauss.set_backend("cpu")
    call()
    assert record_backend[-1] == "cpu"  # set_backend beats the environment
    with fastgauss.use_backend("numpy"):
        call()
        assert record_backend[-1] == "numpy"  # use_backend beats set_backend
        assert fastgauss.get_backend() == "numpy"
        call(backend="cpu")
        assert record_backend[-1] == "cpu"  # backend= beats everything
        with fastgauss.use_backend("cpu"):
            call()
            assert record_backend[-1] == "cpu"  # nesting
        call()
        assert record_backend[-1] == "numpy"  # restored on exit
    assert fastgauss.get_backend() == "cpu"
    fastgauss.set_backend(None)
    assert fastgauss.get_backend() == "numpy"  # the environment again


def test_use_backend_is_thread_local(record_backend):
    import threading

    seen = []
    with fastgauss.use_backend("numpy"):
        thread = threading.Thread(target=lambda: seen.append(fastgauss.get_backend()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_unknown_backend_names(record_backend, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'tpu' from backend="):
        call(backend="tpu")
    with pytest.raises(ValueError, match=r"unknown backend 'gpu' from set_backend"):
        fastgauss.set_backend("gpu")
    with pytest.raises(ValueError, match=r"unknown backend 'numba' from use_backend"):
        with fastgauss.use_backend("numba"):
            pass
    monkeypatch.setenv(_dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"unknown backend 'fast' from the FASTGAUSS_BACKEND environment variable"):
        call()
    assert record_backend == []


def test_cuda_unusable_raises_runtime_error(record_backend, monkeypatch):
    monkeypatch.setattr(_dispatch, "cuda_unavailable_reason", lambda: "no CUDA GPU or driver was found")
    with pytest.raises(RuntimeError, match="backend 'cuda' .* is not usable: no CUDA GPU"):
        call(backend="cuda")
    assert fastgauss.backends() == ("numpy", "cpu")


def test_cuda_unusable_without_gpu_or_simulator():
    """A real process without a GPU and without the simulator: cuda is not listed and asking for it says why."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    code = (
        "import numpy as np, fastgauss\n"
        "print(fastgauss.backends())\n"
        "try:\n"
        "    if 'cuda' not in fastgauss.backends():\n"
        "        fastgauss.q_sample(np.ones(2), 0, fastgauss.NoiseSchedule.linear(10), np.ones(2), backend='cuda')\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if "'cuda'" in result.stdout.splitlines()[0]:
        pytest.skip("this machine has a usable GPU")
    assert result.stdout.splitlines()[0] == "('numpy', 'cpu')"
    assert "RuntimeError backend 'cuda' (from backend=) is not usable" in result.stdout


def test_numba_cuda_compiles_under_numpy_2_5():
    """numba-cuda 0.30's lowering registers np.row_stack, which NumPy 2.5 removed: fastgauss.cuda
    loads it with the alias in place (NumPy 2.5 is imitated here by deleting the alias first),
    and leaves NumPy as it was."""
    code = (
        "import numpy as np\n"
        "if hasattr(np, 'row_stack'): del np.row_stack\n"
        "import fastgauss.cuda\n"
        "import numba.cuda.cpython.unicode  # what the first kernel compile imports\n"
        "print(hasattr(np, 'row_stack'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


def test_backends_lists_usable_ones():
    assert fastgauss.backends()[:2] == ("numpy", "cpu")
    assert ("cuda" in fastgauss.backends()) == CUDA_USABLE


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_host_and_device_rules(record_backend):
    from numba import cuda

    device = cuda.to_device(X0)
    fastgauss.q_sample(device, 1, SCHEDULE, device)
    assert record_backend[-1] == "cuda"  # auto picks cuda for device arrays
    with pytest.raises(TypeError, match="cannot mix host and CUDA arrays in one call: noise on the GPU, x0 on the host"):
        fastgauss.q_sample(X0, 1, SCHEDULE, device)
    with pytest.raises(TypeError, match="cannot mix host and CUDA arrays in one call: x0, noise on the GPU, t on the host"):
        fastgauss.q_sample(device, np.array([1, 2]), SCHEDULE, device)
    with pytest.raises(TypeError, match="backend 'cuda' needs CUDA arrays, but x0, noise is a host array"):
        fastgauss.q_sample(X0, 1, SCHEDULE, X0, backend="cuda")
    with pytest.raises(TypeError, match="backend 'cpu' .* needs host arrays, but x0, noise is a CUDA array"):
        fastgauss.q_sample(device, 1, SCHEDULE, device, backend="cpu")
    with pytest.raises(TypeError, match="out on the GPU"):
        fastgauss.q_sample(X0, 1, SCHEDULE, X0, out=cuda.device_array((2, 3)))


def test_reference_module_has_the_public_signatures():
    for op in fastgauss.reference.__all__:
        public = _dispatch.public_function(op)
        pinned = getattr(fastgauss.reference, op)
        params = [p for p in inspect.signature(public).parameters.values() if p.name != "backend"]
        assert list(inspect.signature(pinned).parameters.values()) == params
    x0 = np.linspace(0, 1, 6).reshape(2, 3)
    np.testing.assert_array_equal(
        fastgauss.reference.q_sample(x0, 5, SCHEDULE, x0), fastgauss.q_sample(x0, 5, SCHEDULE, x0, backend="numpy")
    )
    with pytest.raises(TypeError):
        fastgauss.reference.q_sample(x0, 5, SCHEDULE, x0, backend="cpu")


def test_every_registered_op_has_all_backends():
    import importlib

    for op, family in _dispatch.OPS.items():
        if op.endswith("_vjp"):  # a backward kernel: its public face is fastgauss.vjp
            from fastgauss.vjp import differentiable

            assert differentiable(op[: -len("_vjp")])
        else:
            assert callable(_dispatch.public_function(op) or getattr(fastgauss.Generator, op))
        for package in _dispatch._PACKAGES.values():
            if package == "fastgauss.cuda" and not CUDA_USABLE:
                continue
            assert callable(getattr(importlib.import_module(f"{package}.{family}"), op))


def test_import_compiles_nothing_and_loads_no_numba():
    code = "import sys, fastgauss; print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'numba_cuda')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_registered_op_has_an_example_for_the_main_job():
    from fastgauss._examples import EXAMPLES

    assert set(EXAMPLES) == set(_dispatch.OPS)


def _in_other_byte_order(value):
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return value.astype(value.dtype.newbyteorder("S"))
    return value


# One op per way its host inputs reach a kernel: the diffusion ops pass their arrays through
# as they are (the step and its gradient too), the others convert to the result dtype.
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("op", ["q_sample", "ddpm_step", "ddpm_step_vjp", "normal_kl", "mvn_condition", "hybrid_loss"])
def test_host_data_in_the_other_byte_order_gives_the_same_bits(op, backend):
    """Arrays in the non-native byte order (FITS files, some HDF5 data) are converted, as
    NumPy's ufuncs convert them: the result is the native-order call's, bit for bit."""
    from fastgauss._examples import EXAMPLES
    from fastgauss._selfcheck import CHECK_SHAPE, run

    call = EXAMPLES[op](CHECK_SHAPE, np.float32, np.random.default_rng(5))[0]
    swapped = call._replace(
        args=tuple(_in_other_byte_order(a) for a in call.args),
        kwargs={k: _in_other_byte_order(v) for k, v in call.kwargs.items()},
    )
    assert any(isinstance(a, np.ndarray) and not a.dtype.isnative for a in swapped.args)
    expected, got = run(call, backend), run(swapped, backend)
    expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.dtype.isnative
        np.testing.assert_array_equal(g, e)


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_device_arrays_in_the_other_byte_order_are_refused_by_name():
    from numba import cuda

    swapped = cuda.to_device(np.ones((2, 3), ">f4"))
    native = cuda.to_device(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="noise is a device array of dtype >f4, not in the machine's byte order"):
        fastgauss.q_sample(native, 1, SCHEDULE, swapped, backend="cuda")


@pytest.mark.skipif(not CUDA_USABLE, reason="cuda backend not usable")
def test_a_scalar_where_device_vectors_are_expected_is_a_shape_error():
    """mvn_logpdf's mean as a Python scalar next to device arrays: the same ValueError as on the
    host (it was an AttributeError from reading the scalar's .shape)."""
    from numba import cuda

    x, cov = np.zeros((2, 2)), np.eye(2)
    for backend, args in (("cpu", (x, 0.0, cov)), ("cuda", (cuda.to_device(x), 0.0, cuda.to_device(cov)))):
        with pytest.raises(ValueError, match=r"mean must have shape \(\.\.\., 2\)"):
            fastgauss.mvn_logpdf(*args, backend=backend)


# q_posterior's variance and log variance do not depend on x0 or xt: their cotangents are never read.
UNREAD = {("q_posterior_vjp", 1), ("q_posterior_vjp", 2)}
GENERATOR_METHODS = ("standard_normal", "random", "normal")


@pytest.mark.parametrize("op", sorted(set(_dispatch.OPS) - set(GENERATOR_METHODS)))
def test_masked_arrays_are_refused_by_name(op):
    """A NumPy masked array in any array argument of any op is a TypeError naming it, before
    anything runs: its mask would be dropped silently. The NumPy reference is enough: the checks
    run before the backend."""
    from fastgauss._examples import EXAMPLES
    from fastgauss._selfcheck import CHECK_SHAPE, run

    call = EXAMPLES[op](CHECK_SHAPE, np.float32, np.random.default_rng(5))[0]
    places = [(i, None) for i, a in enumerate(call.args) if isinstance(a, np.ndarray) and (op, i) not in UNREAD]
    places += [(None, k) for k, v in call.kwargs.items() if isinstance(v, np.ndarray)]
    assert places
    for i, key in places:
        if key is None:
            masked = call._replace(args=call.args[:i] + (np.ma.masked_array(call.args[i]),) + call.args[i + 1 :])
        else:
            masked = call._replace(kwargs={**call.kwargs, key: np.ma.masked_array(call.kwargs[key])})
        with pytest.raises(TypeError, match="is a NumPy masked array, whose mask fastgauss cannot honor"):
            run(masked, "numpy")


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_masked_out_is_refused_by_name(backend):
    """The Generator methods' out= too (cpu failed typing its kernel: "Unsupported array type");
    the ops' out= goes through the same check as their inputs."""
    out = np.ma.masked_array(np.zeros(3))
    for method in ("standard_normal", "random"):
        with pytest.raises(TypeError, match="out is a NumPy masked array"):
            getattr(fastgauss.default_rng(0), method)(out=out, backend=backend)
    with pytest.raises(TypeError, match="out is a NumPy masked array"):
        fastgauss.normal_kl(np.zeros(3), 0.0, 0.0, 0.0, out=out, backend=backend)


@pytest.mark.parametrize("value, dtype", [(None, "object"), ("abc", "<U3"), (np.zeros(3, "datetime64[D]"), "datetime64")])
def test_non_numeric_data_is_a_dtype_error_naming_it(value, dtype):
    """Before any shape check: x0=None used to be "noise must have the shape of x0 ()"."""
    with pytest.raises(TypeError, match=rf"unsupported dtype {dtype}.* for x0; fastgauss computes in float32 or float64"):
        fastgauss.q_sample(value, 3, SCHEDULE, np.ones((2, 3)))
