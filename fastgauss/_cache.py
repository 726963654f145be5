"""Numba's on-disk cache, keyed on every source file the kernels compile.

Numba keys a cached kernel on the one file that defines it. fastgauss kernels also
compile code from other files (the scalar math in ``_device/``, helpers of their
package), so an edit there, or an upgrade in place, would leave Numba loading the
old machine code. ``install`` puts a cache locator in front of Numba's own ones for
functions defined inside fastgauss: the same cache places, with a source stamp that
also holds ``source_digest()``, a hash of every file in the compiled packages. Any
change to one of them makes every fastgauss kernel recompile on its next use; the
caches of other programs are untouched.

Compiled code lives only in ``COMPILED_PACKAGES`` (tests/test_cache.py checks that
no other module imports numba to define kernels).
"""

import functools
import hashlib
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
COMPILED_PACKAGES = ("_device", "cpu", "cuda", "_plans")
# Numba's locators for code in ordinary files (numba-cuda's have a leading underscore).
FILE_LOCATORS = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")


@functools.lru_cache(maxsize=1)
def source_digest():
    """SHA-256 (hex) of the path and contents of every .py file in COMPILED_PACKAGES."""
    digest = hashlib.sha256()
    for package in COMPILED_PACKAGES:
        folder = os.path.join(PACKAGE_DIR, package)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                digest.update(f"{package}/{name}\0".encode())
                with open(os.path.join(folder, name), "rb") as file:
                    digest.update(file.read())
    return digest.hexdigest()


def _inside_package(py_file):
    return os.path.abspath(py_file).startswith(PACKAGE_DIR + os.sep)


def _stamped(locator_class):
    """``locator_class`` for fastgauss's own files only, its stamp extended by the digest."""

    class Stamped(locator_class):
        def get_source_stamp(self):
            return super().get_source_stamp(), source_digest()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _inside_package(py_file):
                return None
            return super().from_function(py_func, py_file)

    Stamped.__name__ = Stamped.__qualname__ = "Fastgauss" + locator_class.__name__.lstrip("_")
    return Stamped


def install(cache_impl):
    """Put stamped copies of ``cache_impl``'s file-backed locators in front of its list (once).

    ``cache_impl`` is Numba's ``numba.core.caching.CacheImpl`` (CPU) or numba-cuda's
    ``numba.cuda.core.caching.CacheImpl``; the locators are chosen when a kernel with
    ``cache=True`` is defined, so this runs before the backend defines its kernels.
    """
    locators = cache_impl._locator_classes
    if any(getattr(cls, "_fastgauss", False) for cls in locators):
        return
    stamped = [_stamped(cls) for cls in locators if cls.__name__.lstrip("_") in FILE_LOCATORS]
    for cls in stamped:
        cls._fastgauss = True
    locators[:0] = stamped
