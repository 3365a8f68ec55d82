"""Adam with global gradient-norm clipping, over a MODEL.md parameter dict.

Both operations work **in place**: ``clip_grad_norm`` rescales the gradient
arrays it is given, ``Adam.step`` updates the parameter arrays and the state
arrays. Nothing is reallocated, so the arrays keep their dtype (float32 stays
float32) and a caller holding a reference to ``params[name]`` sees the update.

The optimizer state is a flat ``dict[str, ndarray]`` (``"step"``,
``"m.<name>"``, ``"v.<name>"``) so a checkpoint stores it as it stores the
parameters, with no pickling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def _check_float(name: str, value, low: float, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}: expected a finite value in {lo}{low}, {high}{hi}, got {value}")
    return value


def _check_grads(grads, params=None) -> None:
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads: expected a mapping of name -> array, got {type(grads).__name__}")
    for name, g in grads.items():
        if not isinstance(g, np.ndarray) or not np.issubdtype(g.dtype, np.floating):
            raise TypeError(f"grads[{name!r}]: expected a floating-point ndarray, got {type(g).__name__}")
    if params is None:
        return
    if set(grads) != set(params):
        raise ValueError(
            f"grads: names do not match params: missing {sorted(set(params) - set(grads))}, "
            f"unexpected {sorted(set(grads) - set(params))}"
        )
    for name, p in params.items():
        if grads[name].shape != p.shape:
            raise ValueError(f"grads[{name!r}]: expected shape {p.shape} like params, got {grads[name].shape}")


def global_grad_norm(grads: Mapping[str, np.ndarray]) -> float:
    """The Euclidean norm of all gradients taken together, ``sqrt(sum_p ||g_p||^2)``.

    Accumulated in float64 whatever the gradients' dtype.
    """
    _check_grads(grads)
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in
                         (np.asarray(g, dtype=np.float64) for g in grads.values())))


def clip_grad_norm(grads: Mapping[str, np.ndarray], clip_norm: float | None) -> float:
    """Rescale ``grads`` in place so that their global norm is at most ``clip_norm``.

    With ``n = sqrt(sum_p ||g_p||^2)`` over every gradient together (as
    ``torch.nn.utils.clip_grad_norm_``)::

        g_p <- g_p * clip_norm / n     if n > clip_norm, else unchanged

    Unlike PyTorch, which always multiplies by ``min(1, clip_norm / (n + 1e-6))``,
    gradients under the threshold are left bit-for-bit untouched. A non-finite
    norm is returned without scaling, so that the caller can report it.

    Parameters
    ----------
    grads : dict[str, ndarray]
        Gradients, modified in place.
    clip_norm : float or None
        Threshold (> 0); ``None`` disables clipping.

    Returns
    -------
    float
        The global norm *before* clipping.

    Examples
    --------
    >>> g = {"w": np.array([3.0, 4.0])}
    >>> clip_grad_norm(g, 1.0), g["w"].round(12).tolist()
    (5.0, [0.6, 0.8])
    """
    if clip_norm is not None:
        clip_norm = _check_float("clip_norm", clip_norm, 0.0, low_open=True)
    norm = global_grad_norm(grads)
    if clip_norm is not None and math.isfinite(norm) and norm > clip_norm:
        scale = clip_norm / norm
        for g in grads.values():
            g *= g.dtype.type(scale)
    return norm


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba, 2015) with PyTorch's conventions.

    At step ``t = 1, 2, ...``, for every parameter ``p`` with gradient ``g``::

        g   <- g + weight_decay * p             (L2 penalty, as torch.optim.Adam;
                                                 off by default)
        m   <- beta1 * m + (1 - beta1) * g
        v   <- beta2 * v + (1 - beta2) * g^2
        m^  =  m / (1 - beta1^t)                 (bias corrections)
        v^  =  v / (1 - beta2^t)
        p   <- p - lr * m^ / (sqrt(v^) + eps)

    Parameters
    ----------
    lr : float
        Learning rate (> 0), default 1e-3.
    betas : (float, float)
        Decay rates of the first and second moments, each in [0, 1).
    eps : float
        Added to ``sqrt(v^)`` (> 0), default 1e-8. It must be a normal number in
        the parameters' dtype (>= 1.2e-38 for float32, see ``check_dtype``).
    weight_decay : float
        L2 coefficient (>= 0), default 0.

    Examples
    --------
    >>> opt = Adam(lr=0.1)
    >>> params = {"w": np.array([1.0, -1.0])}
    >>> state = opt.init_state(params)
    >>> opt.step(params, {"w": np.array([0.5, -2.0])}, state)
    >>> params["w"].round(6).tolist(), int(state["step"])   # first step moves by ~lr * sign(g)
    ([0.9, -0.9], 1)
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        _check_float("lr", self.lr, 0.0, low_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise TypeError(f"betas: expected a pair of floats, got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            _check_float(f"betas[{i}]", beta, 0.0, 1.0)
        _check_float("eps", self.eps, 0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def check_dtype(self, dtype) -> None:
        """Raise ``ValueError`` naming ``eps`` unless it is a normal number in ``dtype``.

        An ``eps`` that rounds to 0 (1e-50 in float32) turns the update of a
        parameter whose gradient has always been 0 (the PAD embedding row) into
        0 / 0 = NaN; a subnormal one is no safer (m / eps overflows).
        """
        dtype = np.dtype(dtype)
        tiny = np.finfo(dtype).tiny
        if not dtype.type(self.eps) >= tiny:
            raise ValueError(f"eps: {self.eps} is below the smallest normal {dtype} ({float(tiny):.3g}), "
                             "so it rounds to 0 or a subnormal in the parameters' dtype")

    def to_dict(self) -> dict:
        """The hyperparameters as JSON-ready data (for checkpoints)."""
        return {"lr": float(self.lr), "betas": list(self.betas), "eps": float(self.eps),
                "weight_decay": float(self.weight_decay)}

    @staticmethod
    def init_state(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fresh state: ``step = 0`` and zero moments in each parameter's dtype."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a mapping of name -> array, got {type(params).__name__}")
        state = {"step": np.array(0, dtype=np.int64)}
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"params[{name!r}]: expected a floating-point ndarray, got {type(p).__name__}")
            state[f"m.{name}"] = np.zeros_like(p)
            state[f"v.{name}"] = np.zeros_like(p)
        return state

    def _check_state(self, state, params) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected the dict made by Adam.init_state, got {type(state).__name__}")
        expected = {"step"} | {f"{k}.{n}" for n in params for k in "mv"}
        if set(state) != expected:
            raise ValueError(
                f"state: keys do not match params: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}"
            )
        step = state["step"]
        if not (isinstance(step, np.ndarray) and step.shape == () and np.issubdtype(step.dtype, np.integer)):
            raise TypeError("state['step']: expected a 0-d integer array")
        if step < 0:
            raise ValueError(f"state['step']: expected >= 0, got {int(step)}")
        for name, p in params.items():
            for k in "mv":
                s = state[f"{k}.{name}"]
                if not isinstance(s, np.ndarray) or s.shape != p.shape or s.dtype != p.dtype:
                    raise ValueError(
                        f"state[{k + '.' + name!r}]: expected an array of shape {p.shape} and dtype {p.dtype}"
                    )

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray],
             state: dict[str, np.ndarray]) -> None:
        """One Adam update of ``params`` and ``state``, both in place.

        Parameters
        ----------
        params : dict[str, ndarray]
            Floating-point arrays, updated in place (dtype kept).
        grads : dict[str, ndarray]
            Same names and shapes as ``params`` (already clipped, if wanted).
        state : dict[str, ndarray]
            From ``init_state(params)``, updated in place.
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a mapping of name -> array, got {type(params).__name__}")
        _check_grads(grads, params)
        self._check_state(state, params)
        for dtype in {p.dtype for p in params.values() if np.issubdtype(p.dtype, np.floating)}:
            self.check_dtype(dtype)
        beta1, beta2 = self.betas
        state["step"] += 1
        t = int(state["step"])
        # Python floats so that NumPy keeps float32 arrays in float32 (NEP 50).
        bias1, bias2 = 1.0 - beta1**t, 1.0 - beta2**t
        step_size, root_bias2 = self.lr / bias1, math.sqrt(bias2)
        for name, p in params.items():
            g = grads[name].astype(p.dtype, copy=False)
            if self.weight_decay:
                g = g + self.weight_decay * p
            m, v = state[f"m.{name}"], state[f"v.{name}"]
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            p -= step_size * m / (np.sqrt(v) / root_bias2 + self.eps)
