"""Numba's on-disk cache follows edits to every compiled-in source file (fastgauss._cache)."""

import ast
import os
import shutil

import fastgauss
from fastgauss import _cache
from conftest import run_python

PACKAGE = os.path.dirname(fastgauss.__file__)

# normal_kl(0, 0, 1, 0) = 0.5 (mean1 - mean2)^2 = 0.5; prints the value, then the kernel's
# cache hits and misses in this process.
KL_SCRIPT = """
import numpy as np, fastgauss
from fastgauss.cpu import kl
assert fastgauss.__file__.startswith({package!r}), fastgauss.__file__
value = fastgauss.normal_kl(np.zeros((1, 3)), 0.0, np.ones((1, 3)), 0.0, backend="cpu")[0, 0]
stats = kl._rows.stats
print(value, sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_an_edit_in_device_recompiles_the_kernels_that_use_it(tmp_path):
    """The kernel is defined in cpu/kl.py, its formula in _device/kl.py: editing only the latter
    must still reach the next process (Numba alone would load the stale kernel)."""
    copy = tmp_path / "site"
    shutil.copytree(PACKAGE, copy / "fastgauss", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(copy), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    script = KL_SCRIPT.format(package=str(copy))

    def run():
        value, hits, misses = run_python(script, cwd=str(copy), **env)
        return float(value), int(hits), int(misses)

    assert run() == (0.5, 0, 1)  # compiled and cached
    assert run() == (0.5, 1, 0)  # the cache works: loaded, not compiled
    device_kl = copy / "fastgauss" / "_device" / "kl.py"
    source = device_kl.read_text()
    edited = source.replace("return c.half * (exp_excess(", "return (exp_excess(")  # drop the 0.5
    assert edited != source
    device_kl.write_text(edited)
    assert run() == (1.0, 0, 1)  # recompiled from the edited formula
    assert run() == (1.0, 1, 0)  # and cached again


def test_the_digest_covers_every_compiled_file_and_only_those():
    digest = _cache.source_digest()
    assert len(digest) == 64
    compiled = {os.path.join(PACKAGE, p) for p in _cache.COMPILED_PACKAGES}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            tree = ast.parse(open(path).read())
            imports_numba = any(
                (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "numba" for a in node.names))
                or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "numba")
                for node in ast.walk(tree)
            )
            defines_kernels = imports_numba and ("jit(" in open(path).read())
            # Kernels compiled from a file outside the digest would go stale after an edit.
            assert not defines_kernels or root in compiled, f"{path} defines kernels outside {_cache.COMPILED_PACKAGES}"


def test_other_programs_keep_numbas_own_locators():
    from numba.core.caching import CacheImpl

    import fastgauss.cpu  # noqa: F401  (installs the locators)

    ours = [cls for cls in CacheImpl._locator_classes if getattr(cls, "_fastgauss", False)]
    assert len(ours) == 3
    probe = ours[0].from_function(test_other_programs_keep_numbas_own_locators, __file__)
    assert probe is None  # a file outside fastgauss is left to Numba's own locators
