"""The characters a model can read, by name, in NIST's label order."""

from __future__ import annotations

from emnist_lit.errors import EMNISTConfigError

BALANCED47_CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"
"""EMNIST Balanced's 47 classes in NIST's label order (its mapping file)."""

VIN_CHARSET = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
"""Characters allowed in a Vehicle Identification Number: digits and capitals without I, O and Q."""

NAMED_CHARSETS = {"balanced47": BALANCED47_CHARSET, "vin33": VIN_CHARSET}


def resolve_charset(charset: str) -> str:
    """Turn a charset name (`balanced47`, `vin33`) or an explicit string of characters into the characters, in
    NIST's label order, so that the same characters always get the same class index."""
    chars = NAMED_CHARSETS.get(charset, charset)
    unknown = sorted(set(chars) - set(BALANCED47_CHARSET))
    if not chars or unknown:
        problem = "empty" if not chars else f"characters not in EMNIST Balanced: {''.join(unknown)!r}"
        raise EMNISTConfigError(
            f"charset {charset!r}: {problem}; use one of {sorted(NAMED_CHARSETS)} or a string of characters "
            f"from {BALANCED47_CHARSET!r}"
        )
    if len(set(chars)) != len(chars):
        raise EMNISTConfigError(f"charset {charset!r}: repeated characters")
    return "".join(c for c in BALANCED47_CHARSET if c in chars)
