"""Small random cases for the oracle: parameters and a ragged batch (shared by verify and tests)."""

from __future__ import annotations

import numpy as np

from .config import Config, param_shapes


def random_case(config: Config, B: int = 2, S: int = 3, T: int = 3, seed: int = 0, scale: float = 0.5):
    """Random N(0, scale^2) params and a ragged batch of MODEL.md's form.

    Row 0 uses the whole source and all T labels; row 1 (when B = 2) has a
    source one shorter, PAD after ``src_len``, and a target ending in a PAD
    label, so masking, the frozen encoder state and the loss mask all matter.
    Ordinary ids are drawn from [3, V), after the default special ids.

    Returns
    -------
    params : dict name -> float64 array
    src : int array [B, S];  src_len : int array [B];  tgt : int array [B, T+1]

    Examples
    --------
    >>> params, src, src_len, tgt = random_case(Config(V_src=6, V_tgt=6, E=2, H=2))
    >>> src.shape, src_len.tolist(), tgt[:, 0].tolist()
    ((2, 3), [3, 2], [1, 1])
    """
    if B not in (1, 2):
        raise ValueError(f"B: random_case makes 1 or 2 rows, got {B}")
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(0, scale, s) for n, s in param_shapes(config).items()}
    src_len = np.array([S, max(1, S - 1)][:B])
    src = rng.integers(3, config.V_src, (B, S))
    tgt = np.full((B, T + 1), config.pad_id)
    tgt[:, 0] = config.bos_id
    for b in range(B):
        src[b, src_len[b]:] = config.pad_id
        n_labels = T if b == 0 else max(1, T - 1)  # row 1 ends in PAD labels
        tgt[b, 1:n_labels] = rng.integers(3, config.V_tgt, n_labels - 1)
        tgt[b, n_labels] = config.eos_id
    return params, src, src_len, tgt


def sample_coords(grads, rng, per_name: int = 1):
    """For each name: the coordinate of the largest |gradient| and ``per_name`` random ones."""
    coords = []
    for name, g in grads.items():
        coords.append((name, np.unravel_index(int(np.argmax(np.abs(g.astype(float)))), g.shape)))
        for _ in range(per_name):
            coords.append((name, tuple(int(rng.integers(n)) for n in g.shape)))
    return coords
