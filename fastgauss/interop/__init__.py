"""Adapters at the edge: other libraries' arrays in and out of fastgauss's ops.

``fastgauss._dispatch.ADAPTERS`` maps an array library to its adapter here; a public op
called with such an array hands the call over (``adaptable``). An adapter converts the
arrays, calls the public ops and their VJPs (``fastgauss.vjp``), and converts back: it never
re-implements a formula. Importing fastgauss imports no adapter; an adapter is imported the
first time an array of its library reaches an op.
"""
