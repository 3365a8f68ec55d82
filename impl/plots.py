"""Figures for the demo: attention heatmaps and accuracy against source length.

matplotlib is imported only here and only when a figure is drawn (with the
non-interactive Agg backend), so the rest of ``attnspec.impl`` works without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["save_heatmaps", "save_accuracy_plot"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("drawing figures needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _label(token: str) -> str:
    return "\u2423" if token == " " else token  # an open box, so a space is visible


def _heatmap(ax, attention, src_tokens, out_tokens, title):
    """One heatmap: output steps down, source positions across, weights a_{t,s} in [0, 1]."""
    image = ax.imshow(attention, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(src_tokens)), [_label(t) for t in src_tokens], fontfamily="monospace")
    ax.set_yticks(range(len(out_tokens)), [_label(t) for t in out_tokens], fontfamily="monospace")
    ax.tick_params(length=0)
    ax.set_xlabel("source character")
    ax.set_ylabel("output character")
    ax.set_title(title, fontsize=10, fontfamily="monospace")
    return image


def save_heatmaps(path, examples, *, columns: int = 2) -> Path:
    """Draw attention heatmaps of several examples in one PNG.

    Parameters
    ----------
    path : str or os.PathLike
        The PNG file to write (parent folders are created).
    examples : list of (attention [T_out, S], source tokens, output tokens, title)
        ``attention[t, s]`` is the weight output step ``t`` put on source
        character ``s``; the token lists label the axes.
    columns : int
        Panels per row.
    """
    if not examples:
        raise ValueError("examples: expected at least one example to draw")
    plt = _pyplot()
    n = len(examples)
    columns = min(columns, n)
    rows = -(-n // columns)
    widths = [max(np.shape(e[0])[1] for e in examples), max(np.shape(e[0])[0] for e in examples)]
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                             figsize=(columns * (1.2 + 0.28 * widths[0]), rows * (1.4 + 0.28 * widths[1])))
    for ax, (attention, src_tokens, out_tokens, title) in zip(axes.flat, examples):
        image = _heatmap(ax, np.asarray(attention, dtype=float), src_tokens, out_tokens, title)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return _save(fig, plt, path)


def save_accuracy_plot(path, lengths, curves: dict, *, title: str) -> Path:
    """Plot exact-match accuracy (%) against source length, one line per model.

    ``curves`` maps a label to accuracies (fractions) aligned with ``lengths``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for (label, acc), marker in zip(curves.items(), "os^D"):
        ax.plot(lengths, 100 * np.asarray(acc, dtype=float), marker=marker, markersize=4, label=label)
    ax.set_xlabel("source length (characters)")
    ax.set_ylabel("held-out exact match (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed metadata, so the same figure gives the same bytes (docs stay diff-free).
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
