"""treasure_jax: JAX/Flax training of language models with training-time markers.

Pipeline, one subpackage per stage: markers → annotate → data → model → train → decode → eval.
"""
__version__ = "0.1.0"
