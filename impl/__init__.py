"""attnspec.impl: the Numba implementation."""
