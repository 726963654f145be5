"""The main job's benchmark table is measured honestly: warm, best of at least 3, every backend alike."""

import itertools

import numpy as np
import pytest

from fastgauss import __main__ as main_job
from fastgauss import _bench


def test_time_runs_reports_the_minimum_of_warm_runs_after_an_untimed_one():
    # A fake op whose first call is slow (as a compile would be) and whose later calls vary.
    delays = itertools.chain([0.05], itertools.cycle([0.004, 0.002, 0.003]))
    clock = iter(range(10**6))

    def op():
        next(clock)
        import time

        time.sleep(next(delays))

    timing = _bench.time_runs(op, repeats=3)
    assert len(timing.runs) == 3 and next(clock) == 4  # one warm-up call, then 3 timed calls
    assert timing.warm_up >= 0.05  # the slow first call is the warm-up ...
    assert max(timing.runs) < 0.05  # ... and in none of the timed runs
    assert timing.best == min(timing.runs)
    assert 0.002 <= timing.best < 0.003 + 0.02  # the 2 ms run, give or take scheduling
    assert len(_bench.time_runs(op, repeats=1).runs) == 3  # never fewer than 3


def test_every_row_of_the_table_is_the_best_of_its_warm_runs(monkeypatch):
    ops = ["q_sample", "normal_kl", "standard_normal"]
    monkeypatch.setattr(main_job, "OPS", {op: main_job.OPS[op] for op in ops})
    rows = main_job.benchmark(["numpy", "cpu"], (2, 3, 8, 8), repeats=3)
    assert {row["op"] for row in rows} == set(ops)
    for row in rows:
        for backend in ("numpy", "cpu"):
            timing = row[backend]
            assert len(timing["runs"]) >= 3, row
            assert timing["seconds"] == min(timing["runs"]), row
            assert timing["warm_up"] > 0, row  # an untimed run came first
            assert np.isclose(timing["GB/s"], row["bytes"] / timing["seconds"] / 1e9)


def test_the_environment_names_the_cpu_the_isa_and_the_threads():
    env = main_job.environment()
    for key in ("cpu", "isa", "numba_threads", "threading_layer"):
        assert env[key] not in (None, ""), key
    assert "host" in env["isa"] or "NUMBA_CPU_NAME" in env["isa"]


def test_quick_self_check_runs_the_benchmarked_calls_and_every_op():
    from fastgauss import _selfcheck
    from fastgauss._examples import EXAMPLES

    for op in EXAMPLES:
        checked = 0
        for dtype in _selfcheck.DTYPES:
            every = _selfcheck.calls(op, dtype, np.random.default_rng(0))
            quick = _selfcheck.calls(op, dtype, np.random.default_rng(0), quick=True)
            timed = [c.label for c in every if c.benchmark]
            assert [c.label for c in quick] == (timed or [c.label for c in every[:1]]), op
            checked += len(quick)
        assert checked, op  # no op goes unchecked


def test_the_cuda_rows_put_every_array_argument_on_the_device():
    """The main job on a GPU machine: the self-check and the timed runs of the cuda backend pass
    every array argument as a device array, keyword arguments (ddpm_step's noise=) included, and
    so do the vjp examples built from such calls. Run under the simulator here: the ops whose
    examples take an array by keyword are checked on cuda, and one of them is timed there."""
    import pytest

    from conftest import CUDA_USABLE
    from fastgauss import _selfcheck
    from fastgauss._examples import EXAMPLES

    if not CUDA_USABLE:
        pytest.skip("cuda backend not usable")
    keyword_ops = [
        op for op in EXAMPLES
        if any(isinstance(v, np.ndarray) for c in EXAMPLES[op]((2, 3, 4, 4), np.float32, np.random.default_rng(0)) for v in c.kwargs.values())
    ]
    assert {"ddpm_step", "ddim_step"} <= set(keyword_ops)
    checked = set(keyword_ops) | {op + "_vjp" for op in keyword_ops if op + "_vjp" in EXAMPLES}
    checked.discard("vlb_terms")  # ~15 s in the simulator; vlb_terms_vjp passes var_output by keyword too
    for op in sorted(checked):
        for row in _selfcheck.check_op(op, ["cuda"], quick=True):
            assert row["status"] == "PASS", row
    call = next(c for c in EXAMPLES["ddpm_step"]((2, 3, 4, 4), np.float32, np.random.default_rng(0)) if "noise" in c.kwargs)
    timing = main_job._time(call, "cuda", _selfcheck.run(call, "numpy"), repeats=3)
    assert len(timing.runs) == 3


def test_the_self_check_workers_take_whole_groups_of_ops_that_share_kernels():
    # One op a task compiled a shared kernel in every worker that met it (26 of 119 s of a cold
    # --quick); a group is a backend family (mvn's algebra ops apart), every op in exactly one.
    from fastgauss._dispatch import OPS

    groups = main_job.kernel_groups()
    names = [op for group in groups for op in group]
    assert sorted(names) == sorted(OPS) and len(names) == len(set(names))
    for group in groups:
        assert len({OPS[op].family for op in group}) == 1, group
    families = {OPS[group[0]].family: [] for group in groups}
    for group in groups:
        families[OPS[group[0]].family].append(set(group))
    assert families["mvn"] == [{op for op in OPS if OPS[op].family == "mvn"} - set(main_job.MVN_ALGEBRA), set(main_job.MVN_ALGEBRA)]
    assert all(len(split) == 1 for family, split in families.items() if family != "mvn")
    assert main_job.check_ops.__module__ == "fastgauss._selfcheck"  # spawn workers import it; __main__ they cannot


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "2,x"], "--size must be comma-separated integers"),
        (["--size", "0,3,4,4"], "--size needs positive dimensions"),
        (["--jobs", "0"], "--jobs must be at least 1; got 0"),
    ],
)
def test_bad_options_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main_job.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
