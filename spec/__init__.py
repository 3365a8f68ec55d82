"""attnspec.spec: the symbolic specification and high-precision oracle."""
