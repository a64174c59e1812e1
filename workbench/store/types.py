"""Column types shared by the schema: portable arrays and ids that scale."""

import io
from typing import Any

import numpy as np
from sqlalchemy import JSON, BigInteger, Integer, LargeBinary
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


def array_to_bytes(array: np.ndarray) -> bytes:
    """Serialise an array in NumPy's ``.npy`` format (portable, never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(payload: bytes) -> np.ndarray:
    """Read an array written by :func:`array_to_bytes`; object arrays are refused."""
    return np.load(io.BytesIO(payload), allow_pickle=False)


class NpyArray(TypeDecorator[np.ndarray]):
    """A NumPy array stored as ``.npy`` bytes in a binary column (BLOB / BYTEA)."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else array_to_bytes(np.asarray(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> np.ndarray | None:
        return None if value is None else array_from_bytes(bytes(value))
