"""Decode a handwritten VIN from per-position class probabilities under the rules of 49 CFR 565.15.

A classifier reads each of the 17 boxes on its own; the VIN rules (alphabet without I, O and Q, model year never U, Z
or 0, position 9 a mod-11 check character) then choose the most probable string a real VIN can be, and measure how
sure that choice is among all strings a real VIN can be. Characters of the model's classes that a position does not
allow (lowercase letters, I, O, Q, ...) get probability 0 there and the rest is renormalised: the decoder never
outputs them, it moves their position to its most probable allowed character instead.

The arithmetic runs in numpy: its arrays hold a few hundred numbers per VIN, where torch's fixed cost per operation
(measured 10-100 us here, most with several intra-op threads) would dominate; torch tensors are accepted as input.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emnist_lit.charsets import VIN_CHARSET

VIN_LENGTH = 17
VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
"""Check-digit weight of each position; position 9, the check character itself, weighs 0."""

VIN_TRANSLITERATION: dict[str, int] = (
    {digit: int(digit) for digit in "0123456789"}
    | {letter: value for value, letter in enumerate("ABCDEFGH", start=1)}
    | {letter: value for value, letter in enumerate("JKLMN", start=1)}
    | {"P": 7, "R": 9}
    | {letter: value for value, letter in enumerate("STUVWXYZ", start=2)}
)
"""The numeric value of each VIN character in the check-digit sum."""

CHECK_MODULUS = 11
CHECK_CHARACTERS = "0123456789X"
"""The check character for each remainder of the weighted sum mod 11 (remainder 10 is written X)."""

CHECK_POSITION = 8
MODEL_YEAR_POSITION = 9
MODEL_YEAR_FORBIDDEN = "UZ0"
"""0-based positions: 8 is the check character (position 9 in the standard), 9 the model year (position 10)."""

DEFAULT_MIN_CONFIDENCE = 0.95
"""A reading is called valid/corrected/read only when it holds 95% of the posterior: at 0.5 a coin flip between two
valid VINs would still pass as certain, and a wrong VIN costs far more than a second look by a person. At 0.9 the
line reader trusted 7% wrong answers (3.6% of all photos silently wrong, 840 generated photos); at 0.95, 1.8%."""

STATUS_VALID = "valid"
STATUS_CORRECTED = "corrected"
STATUS_UNVERIFIED = "unverified"
STATUS_READ = "read"
UNREADABLE = "?"
"""Written at a position where the model gives no allowed character any probability (only in unverified text)."""


@dataclass(frozen=True)
class Reading:
    """One decoded string, what the decoder vouches for, and the runners-up at each position for a person to check.

    status: `valid` (the per-position argmax already obeys the rules), `corrected` (the rules changed it), `read` (free
    text, confident), or `unverified` (confidence below the threshold, or no string obeys the rules).
    confidence: for VINs the posterior of `text` among all rule-abiding strings; for free text the product of the
    per-position top probabilities. alternatives: per position, up to top_k (character, probability) pairs, most
    probable first, after disallowed characters were dropped and the rest renormalised.
    """

    text: str
    status: str
    confidence: float
    alternatives: tuple[tuple[tuple[str, float], ...], ...]


def vin_allowed_characters(position: int, check_digit: bool = True) -> str:
    """The characters a VIN may hold at a 0-based position (European VINs, check_digit=False, have no check
    character, so their position 9 takes the whole alphabet)."""
    if check_digit and position == CHECK_POSITION:
        return CHECK_CHARACTERS
    if position == MODEL_YEAR_POSITION:
        return "".join(char for char in VIN_CHARSET if char not in MODEL_YEAR_FORBIDDEN)
    return VIN_CHARSET


def vin_check_character(vin: str) -> str:
    """The check character (0-9 or X) that position 9 of this 17-character VIN must hold; position 9 itself is
    ignored, so this also computes it for a VIN whose check character is unknown."""
    if len(vin) != VIN_LENGTH:
        raise ValueError(f"VIN {vin!r}: has {len(vin)} characters, not {VIN_LENGTH}")
    if unknown := sorted(set(vin) - set(VIN_CHARSET)):
        raise ValueError(f"VIN {vin!r}: characters {unknown} are not in the VIN alphabet {VIN_CHARSET!r}")
    total = sum(VIN_TRANSLITERATION[char] * weight for char, weight in zip(vin, VIN_WEIGHTS, strict=True))
    return CHECK_CHARACTERS[total % CHECK_MODULUS]


def is_valid_vin(vin: str, check_digit: bool = True) -> bool:
    """Whether a string obeys the VIN rules: 17 characters of the alphabet, a legal model year and, unless
    check_digit is False (European VINs), the right check character."""
    if len(vin) != VIN_LENGTH or any(
        char not in vin_allowed_characters(position, check_digit) for position, char in enumerate(vin)
    ):
        return False
    return not check_digit or vin[CHECK_POSITION] == vin_check_character(vin)


def _checked_probabilities(probs: Tensor | np.ndarray, classes: str, positions_dim: int) -> np.ndarray:
    """probs as a float64 array after checking its shape and values against classes, so errors name the cause."""
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes!r}: lists a character twice")
    if isinstance(probs, Tensor):
        probs = probs.detach().to(device="cpu", dtype=torch.float64).numpy()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != positions_dim + 1 or probs.shape[-1] != len(classes):
        expected = "(positions, classes)" if positions_dim == 1 else "(readings, positions, classes)"
        raise ValueError(
            f"probabilities of shape {tuple(probs.shape)}: expected {expected} with {len(classes)} classes "
            f"for {classes!r}"
        )
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probabilities: hold negative, infinite or NaN values; pass softmax outputs")
    if probs.shape[-1] == 0 or (probs.sum(-1) == 0).any():
        raise ValueError("probabilities: a position has no probability on any class; pass softmax outputs")
    return probs


def _read_only(array: np.ndarray) -> np.ndarray:
    """The array, made read-only: cached arrays are shared by every later call."""
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=32)
def _allowed_mask(classes: str, check_digit: bool, length: int) -> np.ndarray:
    """(length, classes) bool: which class each position may hold; only the alphabet rule when length is not 17."""
    rows = [
        vin_allowed_characters(position, check_digit) if length == VIN_LENGTH else VIN_CHARSET
        for position in range(length)
    ]
    mask = [char in allowed for allowed in rows for char in classes]
    return _read_only(np.array(mask, dtype=bool).reshape(length, len(classes)))


@functools.lru_cache(maxsize=32)
def _value_groups(classes: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The VIN-alphabet classes grouped by transliteration value: (their class indices sorted by value, where each
    value's run starts in that order, the values present)."""
    in_alphabet = [index for index, char in enumerate(classes) if char in VIN_TRANSLITERATION]
    order = sorted(in_alphabet, key=lambda index: VIN_TRANSLITERATION[classes[index]])
    sorted_values = [VIN_TRANSLITERATION[classes[index]] for index in order]
    values = sorted(set(sorted_values))
    starts = [sorted_values.index(value) for value in values]
    return _read_only(np.array(order, dtype=np.int64)), _read_only(np.array(starts)), _read_only(np.array(values))


def _logsumexp(log_values: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(log_values))) along axis without overflow; -inf where every term is -inf (call it under
    np.errstate(divide="ignore"), which costs more than this function when entered each time)."""
    peak = log_values.max(axis, keepdims=True)
    peak[peak == -math.inf] = 0.0
    return np.log(np.exp(log_values - peak).sum(axis)) + peak.squeeze(axis)


def _check_digit_optimum(log_probs: np.ndarray, classes: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The most probable string whose check character matches its weighted sum, exactly, for a batch of readings.

    A dynamic programme over the positions except the check position, whose state is the weighted sum mod 11 so far:
    max-product finds the best string, sum-product (logsumexp) the total probability of all matching strings, both in
    log space. Characters of equal transliteration value add the same to the sum, so each position first keeps, per
    value, its best character and their total mass, and a step costs 11 x (at most 10 values) whatever the classes.
    The check position comes last: state s ends only with check character CHECK_CHARACTERS[s].
    log_probs (N, 17, C) must be renormalised over the allowed classes.
    Returns (best class index per position (N, 17), its log probability (N,), log total of matching strings (N,)).
    """
    count = len(log_probs)
    readings = np.arange(count)
    order, starts, values = _value_groups(classes)
    if len(values) == 0:
        return np.zeros((count, VIN_LENGTH), dtype=np.int64), np.full(count, -math.inf), np.full(count, -math.inf)
    by_value = log_probs[..., order]
    value_best = np.maximum.reduceat(by_value, starts, axis=-1)
    value_log_mass = np.log(np.add.reduceat(np.exp(by_value), starts, axis=-1))
    states = np.arange(CHECK_MODULUS)
    # [position, sum after it, value index] -> sum before it
    previous_states = (states[None, :, None] - np.array(VIN_WEIGHTS)[:, None, None] * values) % CHECK_MODULUS

    best = np.full((count, CHECK_MODULUS), -math.inf)
    best[:, 0] = 0.0
    total = best.copy()
    positions = [position for position in range(VIN_LENGTH) if position != CHECK_POSITION]
    choices = []
    for position in positions:
        candidates = best[:, previous_states[position]] + value_best[:, position, None, :]
        choices.append(candidates.argmax(-1))
        best = candidates.max(-1)
        total = _logsumexp(total[:, previous_states[position]] + value_log_mass[:, position, None, :], axis=-1)

    check_class = np.array([classes.find(char) for char in CHECK_CHARACTERS])
    check_log_probs = np.where(check_class >= 0, log_probs[:, CHECK_POSITION, check_class], -math.inf)
    state = (best + check_log_probs).argmax(-1)
    best_log_prob = best[readings, state] + check_log_probs[readings, state]
    log_total = _logsumexp(total + check_log_probs, axis=-1)

    indices = np.zeros((count, VIN_LENGTH), dtype=np.int64)
    indices[:, CHECK_POSITION] = check_class[state]
    class_values = np.array([VIN_TRANSLITERATION.get(char, -1) for char in classes])
    for position, choice in zip(reversed(positions), reversed(choices), strict=True):
        value_index = choice[readings, state]
        of_value = class_values == values[value_index, None]
        indices[:, position] = np.where(of_value, log_probs[:, position], -math.inf).argmax(-1)
        state = previous_states[position, state, value_index]
    return indices, best_log_prob, log_total


def _alternatives(probs: np.ndarray, classes: str, top_k: int) -> list[tuple[tuple[tuple[str, float], ...], ...]]:
    """Per reading and position, the top_k (character, probability) pairs with nonzero probability."""
    indices = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]
    values = np.take_along_axis(probs, indices, -1)
    kept = (values > 0).sum(-1).tolist()
    return [
        tuple(
            tuple(zip(map(classes.__getitem__, position_indices[:n]), position_values[:n], strict=True))
            for position_values, position_indices, n in zip(reading_values, reading_indices, reading_kept, strict=True)
        )
        for reading_values, reading_indices, reading_kept in zip(values.tolist(), indices.tolist(), kept, strict=True)
    ]


def _renormalised(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """probs with disallowed classes zeroed and each position rescaled to sum to 1 (all zeros where nothing is left)."""
    allowed = probs * mask
    mass = allowed.sum(-1, keepdims=True)
    return np.divide(allowed, mass, out=np.zeros_like(allowed), where=mass > 0)


def _best_guess(renormalised: np.ndarray, classes: str) -> str:
    """Per-position argmax over the allowed characters, UNREADABLE where none has any probability."""
    indices = renormalised.argmax(-1)
    values = np.take_along_axis(renormalised, indices[:, None], -1)[:, 0]
    return "".join(classes[i] if v > 0 else UNREADABLE for v, i in zip(values.tolist(), indices.tolist(), strict=True))


def decode_vins(
    probs: Tensor | np.ndarray,
    classes: str,
    check_digit: bool = True,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    top_k: int = 3,
) -> list[Reading]:
    """Decode a batch of VINs at once, probs (N, 17, C) over classes; see decode_vin for what each reading holds."""
    probs = _checked_probabilities(probs, classes, positions_dim=2)
    if probs.shape[1] != VIN_LENGTH:
        raise ValueError(f"probabilities of shape {tuple(probs.shape)}: a batch of VINs needs {VIN_LENGTH} positions")
    if top_k < 0:
        raise ValueError(f"top_k {top_k}: must be 0 or more")
    renormalised = _renormalised(probs, _allowed_mask(classes, check_digit, VIN_LENGTH))
    with np.errstate(divide="ignore"):
        log_probs = np.log(renormalised)
        if check_digit:
            best_indices, best_log_probs, log_totals = _check_digit_optimum(log_probs, classes)
        else:
            best_indices = log_probs.argmax(-1)
            best_log_probs = log_probs.max(-1).sum(-1)
            log_totals = _logsumexp(log_probs, axis=-1).sum(-1)
    argmax_indices = probs.argmax(-1)
    argmax_log_probs = np.take_along_axis(log_probs, argmax_indices[..., None], -1).sum((-2, -1))

    readings = []
    alternatives = _alternatives(renormalised, classes, top_k)
    rows = zip(
        argmax_indices.tolist(),
        argmax_log_probs.tolist(),
        best_indices.tolist(),
        best_log_probs.tolist(),
        log_totals.tolist(),
        alternatives,
        strict=True,
    )
    for number, (argmax, argmax_log_prob, best, best_log_prob, log_total, reading_alternatives) in enumerate(rows):
        if best_log_prob == -math.inf:
            text, status, confidence = _best_guess(renormalised[number], classes), STATUS_UNVERIFIED, 0.0
        else:
            argmax_text = "".join(classes[index] for index in argmax)
            if is_valid_vin(argmax_text, check_digit):
                # the argmax is optimal; taking it rather than the DP's pick keeps ties on the model's own answer
                text, status, log_prob = argmax_text, STATUS_VALID, argmax_log_prob
            else:
                text, status, log_prob = "".join(classes[index] for index in best), STATUS_CORRECTED, best_log_prob
            confidence = min(1.0, math.exp(log_prob - log_total))
            if confidence < min_confidence:
                status = STATUS_UNVERIFIED
        readings.append(Reading(text, status, confidence, reading_alternatives))
    return readings


def decode_vin(
    probs: Tensor | np.ndarray,
    classes: str,
    check_digit: bool = True,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    top_k: int = 3,
) -> Reading:
    """The most probable valid VIN for per-position class probabilities probs (positions, C) over classes.

    The answer is exact: a dynamic programme over the weighted check sum, not a search over substitutions. Its
    confidence is its posterior among all rule-abiding strings, positions taken as independent, i.e. how likely it
    is the VIN written given that a real VIN was written. With check_digit False (European VINs) only the alphabet and
    model-year rules apply. Not 17 positions, or no rule-abiding string with nonzero probability: `unverified`,
    confidence 0, text the per-position argmax over the VIN alphabet ('?' where the model saw no allowed character).
    """
    probs = _checked_probabilities(probs, classes, positions_dim=1)
    if probs.shape[0] == VIN_LENGTH:
        return decode_vins(probs[None], classes, check_digit, min_confidence, top_k)[0]
    if top_k < 0:
        raise ValueError(f"top_k {top_k}: must be 0 or more")
    renormalised = _renormalised(probs, _allowed_mask(classes, check_digit, probs.shape[0]))
    alternatives = _alternatives(renormalised[None], classes, top_k)[0]
    return Reading(_best_guess(renormalised, classes), STATUS_UNVERIFIED, 0.0, alternatives)


def decode_text(
    probs: Tensor | np.ndarray, classes: str, min_confidence: float = DEFAULT_MIN_CONFIDENCE, top_k: int = 3
) -> Reading:
    """Free text, no rules: the per-position argmax over all of the model's classes.

    Confidence is the product of the per-position top probabilities (the chance the whole string is right, positions
    independent); status `read` when it reaches min_confidence, else `unverified`.
    """
    probs = _checked_probabilities(probs, classes, positions_dim=1)
    if top_k < 0:
        raise ValueError(f"top_k {top_k}: must be 0 or more")
    probs = probs / probs.sum(-1, keepdims=True)
    indices = probs.argmax(-1)
    confidence = math.exp(np.log(probs.max(-1)).sum())
    status = STATUS_READ if confidence >= min_confidence else STATUS_UNVERIFIED
    text = "".join(classes[index] for index in indices.tolist())
    return Reading(text, status, confidence, _alternatives(probs[None], classes, top_k)[0])
