"""Every example in the public modules' docstrings runs as written and prints what it shows
(the doctests, with the numpy backend: the values are the reference's, and nothing compiles;
``np`` and ``fastgauss`` are imported, as NumPy's own examples assume ``np``)."""

import doctest
import importlib

import numpy as np
import pytest

import fastgauss
from fastgauss import _dispatch

MODULES = ["fastgauss.diffusion", "fastgauss.kl", "fastgauss.mvn", "fastgauss.objective", "fastgauss.random",
           "fastgauss.vjp", "fastgauss.schedules"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_written(name, monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "numpy")
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, extraglobs={"np": np, "fastgauss": fastgauss}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} examples failed (output above)"
