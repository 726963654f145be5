"""Adapters at the edge: other array kinds in, the same kind out.

``fastgauss._dispatch`` recognizes an adapter's array kind without importing its library
and hands the call to ``fastgauss.interop.<kind>``; the adapter converts and calls the
public ops (never re-implements them). Each adapter imports its optional library, so
``import fastgauss`` imports none of them.
"""
