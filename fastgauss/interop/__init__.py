"""Adapters at the edge: other libraries' arrays in, the same kind out (torch tensors, Dask arrays).

``fastgauss._dispatch.ADAPTERS`` maps an array library to its adapter here; a public op
called with such an array hands the call over (``fastgauss._dispatch.adapts``). An adapter
converts the arrays, calls the public ops (and, for autograd, their VJPs: ``fastgauss.vjp``)
and converts back: it never re-implements a formula. Importing fastgauss imports no
adapter; an adapter (and its library) is imported the first time an array of its kind
reaches an op.
"""
