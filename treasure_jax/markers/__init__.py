"""Markers: taxonomy, marker-list text format, prompt-side dropout, frequency statistics.

Pure Python on purpose (no JAX, no TensorFlow): annotation, data, decoding and evaluation all
share it, and it must import in a second.
"""
