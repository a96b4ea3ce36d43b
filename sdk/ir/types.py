"""Element types, symbolic dimensions and tensor types shared by graph-level and tensor-level IR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime_c import abi


def _abi_dtypes(*names: str) -> dict[str, np.dtype]:
    """NumPy dtypes for element types named as in the ABI; a name the ABI does not have, or a size that
    differs from the ABI's, fails at import, so the two tables cannot drift."""
    out: dict[str, np.dtype] = {}
    for name in names:
        if name not in abi.DTYPES or abi.dtype_bytes(name) != np.dtype(name).itemsize:
            raise TypeError(f"dtype {name!r} is not an element type of kiln.runtime_c.abi.DTYPES")
        out[name] = np.dtype(name)
    return out


#: The element types the compiler handles and their NumPy equivalents: a subset of the ABI's
#: (:data:`kiln.runtime_c.abi.DTYPES` also lists types that only pass through, such as ``bfloat16``, which has
#: no NumPy dtype). One table, used everywhere.
DTYPES: dict[str, np.dtype] = _abi_dtypes(
    "float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"
)


def dtype_of(arr: np.ndarray | np.dtype) -> str:
    """The kiln dtype name of a NumPy array or dtype."""
    dt = arr.dtype if isinstance(arr, np.ndarray) else np.dtype(arr)
    for name, npdt in DTYPES.items():
        if npdt == dt:
            return name
    raise TypeError(f"unsupported element type {dt}; kiln supports {', '.join(DTYPES)}")


def np_dtype(dtype: str) -> np.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise TypeError(f"unknown dtype {dtype!r}; kiln supports {', '.join(DTYPES)}") from None


def itemsize(dtype: str) -> int:
    return int(np_dtype(dtype).itemsize)


def is_float(dtype: str) -> bool:
    return dtype.startswith("float")


@dataclass(frozen=True, order=True)
class Sym:
    """A symbolic dimension (for example a dynamic batch size ``N``). Compared by name."""

    name: str

    def __str__(self) -> str:
        return self.name


Dim = int | Sym


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape; dimensions are ints or :class:`Sym`."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        np_dtype(self.dtype)
        for d in self.shape:
            if not isinstance(d, (int, Sym)) or (isinstance(d, int) and d < 0):
                raise TypeError(f"invalid dimension {d!r} in shape {self.shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise ValueError(f"shape {self} has symbolic dimensions; bind them to sizes before compiling")
        return tuple(int(d) for d in self.shape)  # type: ignore[arg-type]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.static_shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def shape_str(shape: tuple[Dim, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"
