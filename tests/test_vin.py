"""VIN decoding: the check character, the exact most probable valid VIN and its posterior, and the statuses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from emnist_lit.charsets import BALANCED47_CHARSET, VIN_CHARSET
from emnist_lit.vin import (
    STATUS_CORRECTED,
    STATUS_READ,
    STATUS_UNVERIFIED,
    STATUS_VALID,
    decode_text,
    decode_vin,
    decode_vins,
    is_valid_vin,
    vin_allowed_characters,
    vin_check_character,
)

HONDA = "1HGCM82633A004352"
"""A real VIN: 1*8 + H8*7 + G7*6 + C3*5 + M4*4 + 8*3 + 2*2 + 6*10 + 3*9 + A1*8 + 4*5 + 3*4 + 5*3 + 2*2 = 311,
311 mod 11 = 3, its 9th character."""


def table(text: str, classes: str = VIN_CHARSET, **spread: dict[str, float]) -> torch.Tensor:
    """Probabilities (len(text), C): one-hot on text, except positions given as p<0-based index>={char: prob}."""
    probs = torch.zeros(len(text), len(classes))
    for position, char in enumerate(text):
        probs[position, classes.index(char)] = 1.0
    for key, chars in spread.items():
        position = int(key.removeprefix("p"))
        probs[position] = 0.0
        for char, prob in chars.items():
            probs[position, classes.index(char)] = prob
    return probs


@pytest.mark.parametrize(
    ("vin", "check"),
    [("1M8GDM9AXKP042788", "X"), ("11111111111111111", "1"), (HONDA, "3"), ("JH4KA7561PC008269", "1")],
)
def test_check_character_of_real_vins(vin: str, check: str) -> None:
    assert vin_check_character(vin) == check
    assert is_valid_vin(vin)
    wrong = next(c for c in "0123456789X" if c != check)
    assert not is_valid_vin(vin[:8] + wrong + vin[9:])


def test_is_valid_vin_applies_the_alphabet_and_model_year_rules() -> None:
    assert not is_valid_vin(HONDA[:16])
    for letter in "IOQ":
        vin = letter + HONDA[1:]
        assert not is_valid_vin(vin, check_digit=False)
    for year in "UZ0":
        assert not is_valid_vin(HONDA[:9] + year + HONDA[10:], check_digit=False)
    assert set(vin_allowed_characters(9)) == set(VIN_CHARSET) - set("UZ0")
    assert vin_allowed_characters(8) == "0123456789X"
    assert vin_allowed_characters(8, check_digit=False) == VIN_CHARSET


def test_confident_valid_argmax_is_read_as_valid() -> None:
    probs = table(HONDA, p0={"1": 0.97, "7": 0.03}, p8={"3": 0.96, "8": 0.04}, p15={"5": 0.95, "S": 0.05})
    reading = decode_vin(probs, VIN_CHARSET)
    assert (reading.text, reading.status) == (HONDA, STATUS_VALID)
    assert reading.confidence >= 0.9
    assert reading.alternatives[15] == (("5", pytest.approx(0.95)), ("S", pytest.approx(0.05)))


def test_check_digit_overturns_the_per_position_argmax() -> None:
    # S at position 16 would need check character 5; the check box reads 3 (0.97) far more likely than 5 (0.03)
    assert is_valid_vin(HONDA[:8] + "5" + HONDA[9:15] + "S" + HONDA[16])
    probs = table(HONDA, p8={"3": 0.97, "5": 0.03}, p15={"S": 0.55, "5": 0.45})
    reading = decode_vin(probs, VIN_CHARSET)
    assert reading.text == HONDA
    assert reading.status == STATUS_CORRECTED
    assert reading.confidence == pytest.approx(0.45 * 0.97 / (0.45 * 0.97 + 0.55 * 0.03))


def test_check_character_x_is_remainder_ten() -> None:
    vin = "1M8GDM9AXKP042788"
    assert decode_vin(table(vin), VIN_CHARSET).text == vin
    reading = decode_vin(table(vin, BALANCED47_CHARSET, p8={"7": 0.6, "X": 0.4}), BALANCED47_CHARSET)
    assert (reading.text, reading.status, reading.confidence) == (vin, STATUS_CORRECTED, pytest.approx(1.0))


def brute_force(probs: torch.Tensor, classes: str, positions: list[int]) -> tuple[str, float, float]:
    """Best valid string, its probability and the total of all valid strings, by enumerating the given positions
    over every allowed character (all other positions one-hot)."""
    fixed = [classes[i] for i in probs.argmax(-1).tolist()]
    best, best_prob, total = "", 0.0, 0.0
    for chars in itertools.product(*(vin_allowed_characters(p) for p in positions)):
        text = fixed.copy()
        for position, char in zip(positions, chars, strict=True):
            text[position] = char
        text = "".join(text)
        if is_valid_vin(text):
            prob = math.prod(probs[p, classes.index(c)].item() for p, c in zip(positions, chars, strict=True))
            total += prob
            if prob > best_prob:
                best, best_prob = text, prob
    return best, best_prob, total


@pytest.mark.parametrize(("seed", "positions"), [(0, [3, 8, 9]), (1, [0, 8, 16]), (2, [7, 8, 12]), (3, [1, 9, 15])])
def test_decoder_finds_the_exact_optimum_and_valid_mass(seed: int, positions: list[int]) -> None:
    generator = torch.Generator().manual_seed(seed)
    probs = table(HONDA).double()
    for position in positions:
        # peaked random distributions, so that the check constraint often overturns the argmax
        probs[position] = torch.rand(len(VIN_CHARSET), generator=generator, dtype=torch.float64) ** 6
    best, best_prob, total = brute_force(probs, VIN_CHARSET, positions)
    reading = decode_vin(probs, VIN_CHARSET, min_confidence=0.0)
    assert reading.text == best
    assert reading.confidence == pytest.approx(best_prob / total, rel=1e-9)


def test_batch_decoding_matches_one_at_a_time() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(20, 17, len(BALANCED47_CHARSET), generator=generator) * 4, -1)
    for together, alone in zip(
        decode_vins(probs, BALANCED47_CHARSET), map(decode_vin, probs, [BALANCED47_CHARSET] * 20), strict=True
    ):
        assert (together.text, together.status, together.alternatives) == (alone.text, alone.status, alone.alternatives)
        assert together.confidence == pytest.approx(alone.confidence, rel=1e-12)


def test_balanced47_input_never_yields_i_o_q_or_lowercase() -> None:
    probs = table(
        HONDA,
        BALANCED47_CHARSET,
        p0={"I": 0.7, "1": 0.3},
        p11={"O": 0.6, "0": 0.4},
        p13={"Q": 0.6, "4": 0.3, "q": 0.1},
        p4={"n": 0.8, "M": 0.2},
    )
    reading = decode_vin(probs, BALANCED47_CHARSET)
    assert (reading.text, reading.status) == (HONDA, STATUS_CORRECTED)
    assert reading.alternatives[13] == (("4", pytest.approx(1.0)),)
    generator = torch.Generator().manual_seed(0)
    for probs in torch.softmax(torch.randn(50, 17, len(BALANCED47_CHARSET), generator=generator) * 5, -1):
        reading = decode_vin(probs, BALANCED47_CHARSET)
        assert is_valid_vin(reading.text)
        assert all(char in VIN_CHARSET for position in reading.alternatives for char, _ in position)


@pytest.mark.parametrize("check_digit", [True, False])
def test_model_year_is_never_u_z_or_0(check_digit: bool) -> None:
    uniform_check = {c: 1 / 11 for c in "0123456789X"}
    probs = table(HONDA, p8=uniform_check, p9={"0": 0.4, "U": 0.25, "Z": 0.2, "Y": 0.1, "S": 0.05})
    reading = decode_vin(probs, VIN_CHARSET, check_digit=check_digit, min_confidence=0.0)
    assert reading.text[9] == "Y"
    assert is_valid_vin(reading.text, check_digit=check_digit)
    assert reading.status == STATUS_CORRECTED


def test_nearly_tied_valid_strings_are_unverified() -> None:
    # two valid strings: 5 with check 3 (0.52 * 0.51) and S with check 5 (0.48 * 0.49)
    probs = table(HONDA, p8={"3": 0.51, "5": 0.49}, p15={"5": 0.52, "S": 0.48})
    expected = 0.52 * 0.51 / (0.52 * 0.51 + 0.48 * 0.49)
    reading = decode_vin(probs, VIN_CHARSET)
    assert (reading.text, reading.status, reading.confidence) == (HONDA, STATUS_UNVERIFIED, pytest.approx(expected))
    assert decode_vin(probs, VIN_CHARSET, min_confidence=0.5).status == STATUS_VALID


@pytest.mark.parametrize("length", [0, 16, 18])
def test_wrong_length_is_unverified(length: int) -> None:
    text = (HONDA * 2)[:length]
    reading = decode_vin(table(text, BALANCED47_CHARSET), BALANCED47_CHARSET)
    assert (reading.text, reading.status, reading.confidence) == (text, STATUS_UNVERIFIED, 0.0)


def test_no_valid_string_is_unverified_best_guess() -> None:
    wrong_check = HONDA[:8] + "4" + HONDA[9:]
    reading = decode_vin(table(wrong_check), VIN_CHARSET)
    assert (reading.text, reading.status, reading.confidence) == (wrong_check, STATUS_UNVERIFIED, 0.0)


def test_european_vins_have_no_check_character() -> None:
    wrong_check = HONDA[:8] + "4" + HONDA[9:]
    reading = decode_vin(table(wrong_check), VIN_CHARSET, check_digit=False)
    assert (reading.text, reading.status, reading.confidence) == (wrong_check, STATUS_VALID, 1.0)
    volkswagen = "WVWZZZ1JZXW000001"
    assert decode_vin(table(volkswagen), VIN_CHARSET, check_digit=False).status == STATUS_VALID
    probs = table(volkswagen, BALANCED47_CHARSET, p14={"O": 0.96, "0": 0.039, "D": 0.001})
    reading = decode_vin(probs, BALANCED47_CHARSET, check_digit=False)
    assert (reading.text, reading.status, reading.confidence) == (volkswagen, STATUS_CORRECTED, pytest.approx(0.975))


def test_free_text_is_the_argmax_with_the_product_confidence() -> None:
    probs = table("aB7", BALANCED47_CHARSET, p0={"a": 0.9, "O": 0.1}, p1={"B": 0.95, "8": 0.05})
    reading = decode_text(probs, BALANCED47_CHARSET)
    assert (reading.text, reading.status, reading.confidence) == ("aB7", STATUS_UNVERIFIED, pytest.approx(0.855))
    assert decode_text(probs, BALANCED47_CHARSET, min_confidence=0.8).status == STATUS_READ
    assert reading.alternatives[0] == (("a", pytest.approx(0.9)), ("O", pytest.approx(0.1)))


def test_alternatives_are_renormalised_top_k() -> None:
    probs = table(HONDA, BALANCED47_CHARSET, p3={"C": 0.5, "O": 0.2, "G": 0.2, "0": 0.1})
    reading = decode_vin(probs, BALANCED47_CHARSET, top_k=2)
    assert reading.alternatives[3] == (("C", pytest.approx(0.625)), ("G", pytest.approx(0.25)))
    assert decode_vin(probs, BALANCED47_CHARSET, top_k=0).alternatives[3] == ()


def test_bad_input_is_refused_with_the_cause() -> None:
    with pytest.raises(ValueError, match="33 classes"):
        decode_vin(torch.ones(17, 5), VIN_CHARSET)
    with pytest.raises(ValueError, match="negative"):
        decode_vin(-table(HONDA), VIN_CHARSET)
    with pytest.raises(ValueError, match="twice"):
        decode_text(torch.ones(3, 2), "AA")
