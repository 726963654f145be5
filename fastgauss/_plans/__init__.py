"""Host-side plans that the compiled backends share, below the public modules and above the kernels.

A plan is plain Python and NumPy: it decides how a call maps onto kernels (batch
geometry, whether to fuse factor-and-sample, per-timestep coefficient tables, the noise
mode, the failure protocol of the factorizations) and leaves the target-specific part
(allocate, copy to the device, launch) to the backend that calls it. Nothing here
imports numba, a backend or a public module.

- stream.py     the Philox stream record (values per block per dtype, key and counter
                words) and the counter state a Generator holds (Stream, as_stream)
- diffusion.py  per-timestep coefficient tables of the two diffusion kernels (linear and
                fused step) and the noise mode: LinearPlan, StepPlan
- mvn.py        the factorization failure protocol (Failure, summarize, NO_CHECK), the
                fuse-or-factor-first decision (Target, factor_first) and batch geometry
"""
