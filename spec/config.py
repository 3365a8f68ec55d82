"""Model configuration, special ids and parameter names/shapes: the one source of truth.

Every other module (the oracle, the Numba implementation, the properties, the
conformance kit) imports these definitions instead of retyping them, so the
names and shapes of MODEL.md live in exactly one place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

PAD, BOS, EOS = 0, 1, 2
"""Default special ids of MODEL.md."""

SCORES = ("dot", "scaled_dot", "general", "concat")
"""The attention score functions of MODEL.md; ``dot`` is the default."""

BASELINE = "none"
"""Score name of the plain seq2seq baseline without attention (comparisons only)."""

DTYPES = ("float64", "float32")


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _dtype_name(dtype) -> str:
    """The name of a NumPy dtype or scalar type (``np.float32`` -> ``"float32"``)."""
    import numpy as np  # here, not at the top: the CLI's parser imports this module and must not load NumPy

    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return np.dtype(dtype).name
    raise TypeError(f"dtype: expected one of {DTYPES} (a str or NumPy dtype), got {dtype!r}")


@dataclass(frozen=True)
class Config:
    """Sizes and options of one attention seq2seq model (MODEL.md notation).

    Parameters
    ----------
    V_src, V_tgt : int
        Source and target vocabulary sizes (special ids included).
    E, H : int
        Embedding and hidden sizes.
    L : int
        Number of LSTM layers in the encoder and in the decoder (>= 1).
    score : str
        One of ``SCORES`` (default ``"dot"``) or ``"none"`` for the baseline
        without attention.
    input_feeding : bool
        Feed h~_{t-1} into the decoder input (default True).
    dtype : str
        ``"float64"`` (reference precision, default) or ``"float32"``. A NumPy
        dtype (``np.float32``, ``np.dtype("float32")``) is stored as its name,
        so that the config stays JSON-serialisable and equal to the one made
        with the string.
    pad_id, bos_id, eos_id : int
        Special ids, defaults PAD = 0, BOS = 1, EOS = 2.

    Examples
    --------
    >>> Config(V_src=6, V_tgt=6, E=3, H=2).score
    'dot'
    """

    V_src: int
    V_tgt: int
    E: int
    H: int
    L: int = 1
    score: str = "dot"
    input_feeding: bool = True
    dtype: str = "float64"
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS

    def __post_init__(self):
        for name in ("V_src", "V_tgt", "E", "H", "L"):
            _check_int(name, getattr(self, name), 1)
        if self.score not in SCORES + (BASELINE,):
            raise ValueError(
                f"score: unknown score function {self.score!r}; "
                f"expected one of {SCORES + (BASELINE,)}"
            )
        if not isinstance(self.input_feeding, bool):
            raise TypeError(f"input_feeding: expected a bool, got {type(self.input_feeding).__name__}")
        if not isinstance(self.dtype, str):  # frozen: the one way to store the normalised name
            object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {self.dtype!r}")
        for name in ("pad_id", "bos_id", "eos_id"):
            _check_int(name, getattr(self, name), 0)
            if getattr(self, name) >= self.V_tgt:
                raise ValueError(
                    f"{name}: {getattr(self, name)} is not a valid target id (V_tgt = {self.V_tgt})"
                )
        if self.pad_id >= self.V_src:
            raise ValueError(f"pad_id: {self.pad_id} is not a valid source id (V_src = {self.V_src})")
        if len({self.pad_id, self.bos_id, self.eos_id}) != 3:
            raise ValueError(
                f"pad_id, bos_id, eos_id: must be distinct, got "
                f"{self.pad_id}, {self.bos_id}, {self.eos_id}"
            )

    @property
    def attention(self) -> bool:
        """False only for the baseline without attention."""
        return self.score != BASELINE

    @property
    def feeds_input(self) -> bool:
        """Whether the decoder input is [Emb(y); h~_{t-1}].

        The baseline without attention is plain seq2seq: MODEL.md leaves input
        feeding undefined for it, and we define it as off (docs/decisions.md).
        """
        return self.input_feeding and self.attention

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed (validated again)."""
        return Config(**{**asdict(self), **changes})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"config: expected JSON text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:          # JSONDecodeError is a ValueError
            raise ValueError(f"config: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("config: expected a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**data)


def lstm_param_shapes(prefix: str, in_size: int, H: int, L: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a ``torch.nn.LSTM`` stack, as in MODEL.md."""
    shapes = {}
    for k in range(L):
        shapes[f"{prefix}.weight_ih_l{k}"] = (4 * H, in_size if k == 0 else H)
        shapes[f"{prefix}.weight_hh_l{k}"] = (4 * H, H)
        shapes[f"{prefix}.bias_ih_l{k}"] = (4 * H,)
        shapes[f"{prefix}.bias_hh_l{k}"] = (4 * H,)
    return shapes


def attention_param_shapes(score: str, H: int) -> dict[str, tuple[int, ...]]:
    """The parameters of a score function (MODEL.md's table), by short name: W_a, v_a.

    >>> attention_param_shapes("concat", 3)
    {'W_a': (3, 6), 'v_a': (3,)}
    """
    if score == "general":
        return {"W_a": (H, H)}
    if score == "concat":
        return {"W_a": (H, 2 * H), "v_a": (H,)}
    return {}


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every parameter name of MODEL.md for ``config``, with its shape, in state-dict order.

    Examples
    --------
    >>> shapes = param_shapes(Config(V_src=7, V_tgt=6, E=3, H=2, score="general"))
    >>> shapes["attention.W_a"], shapes["decoder.lstm.weight_ih_l0"]
    ((2, 2), (8, 5))
    """
    c = config
    shapes: dict[str, tuple[int, ...]] = {"encoder.embedding.weight": (c.V_src, c.E)}
    shapes.update(lstm_param_shapes("encoder.lstm", c.E, c.H, c.L))
    shapes["decoder.embedding.weight"] = (c.V_tgt, c.E)
    dec_in = c.E + c.H if c.feeds_input else c.E
    shapes.update(lstm_param_shapes("decoder.lstm", dec_in, c.H, c.L))
    for name, shape in attention_param_shapes(c.score, c.H).items():
        shapes[f"attention.{name}"] = shape
    if c.attention:
        shapes["attention.W_c"] = (c.H, 2 * c.H)
    shapes["generator.weight"] = (c.V_tgt, c.H)
    shapes["generator.bias"] = (c.V_tgt,)
    return shapes
