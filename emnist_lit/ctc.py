"""Reading a line model's CTC output: per-column probabilities over the classes plus a blank (index 0), turned into
the string they spell, or into per-character probability tables that the VIN decoder can weigh against its rules."""

from __future__ import annotations

import math

import numpy as np

BLANK = 0
"""CTC's blank: the column holds no character, or separates two equal ones."""


def best_path(probs: np.ndarray) -> tuple[list[int], list[float]]:
    """The classes (0-based, blank excluded) the most probable column of each frame spells, with repeats merged and
    blanks dropped, and the probability of each character: the highest its class reached over its run of frames.
    probs: (T, K + 1) probabilities, column 0 the blank."""
    best = probs.argmax(1)
    characters, confidences = [], []
    previous = BLANK
    for frame, index in enumerate(best.tolist()):
        if index != BLANK and index != previous:
            characters.append(index - 1)
            confidences.append(float(probs[frame, index]))
        elif index != BLANK:
            confidences[-1] = max(confidences[-1], float(probs[frame, index]))
        previous = index
    return characters, confidences


def tables_of(probs: np.ndarray, owner: np.ndarray, length: int) -> np.ndarray:
    """Each character's table in an alignment (`align`): the sum of its frames' class probabilities, normalised, so
    the VIN decoder chooses among the classes with the model's own uncertainty."""
    tables = np.zeros((length, probs.shape[1] - 1))
    np.add.at(tables, owner[owner >= 0], probs[owner >= 0, 1:])
    mass = tables.sum(1, keepdims=True)
    return np.divide(tables, mass, out=np.full_like(tables, 1.0 / tables.shape[1]), where=mass > 0)


def spans_of(owner: np.ndarray, length: int) -> list[tuple[int, int]]:
    """The first and last frame of each character in an alignment (`align`)."""
    frames = [np.flatnonzero(owner == k) for k in range(length)]
    return [(int(f[0]), int(f[-1])) for f in frames]


def align(probs: np.ndarray, length: int) -> np.ndarray | None:
    """Which character (0 to length - 1) each frame holds in the best alignment of the frames with exactly
    `length` characters, -1 for a blank frame; None when there are too few frames for that many.

    A Viterbi pass over CTC's states (blank, character 1, blank, ..., character `length`, blank) in which a character
    state's score is the frame's probability of holding any character (1 - blank): it finds where the characters
    are without deciding which they are."""
    frames, _ = probs.shape
    if length < 1 or frames < length:
        return None
    with np.errstate(divide="ignore"):
        blank = np.log(probs[:, BLANK])
        character = np.log(np.clip(1.0 - probs[:, BLANK], 0.0, 1.0))
    states = 2 * length + 1
    is_character = np.arange(states) % 2 == 1
    emission = np.where(is_character[None, :], character[:, None], blank[:, None])  # (T, states)
    score = np.full(states, -math.inf)
    score[0], score[1] = emission[0, 0], emission[0, 1]
    steps = np.zeros((frames, states), dtype=np.int8)  # how many states back each state came from: 0, 1 or 2
    skip_allowed = is_character.copy()
    skip_allowed[1] = False
    for frame in range(1, frames):
        stay = score
        advance = np.concatenate([[-math.inf], score[:-1]])
        skip = np.where(skip_allowed, np.concatenate([[-math.inf, -math.inf], score[:-2]]), -math.inf)
        candidates = np.stack([stay, advance, skip])
        steps[frame] = candidates.argmax(0)
        score = candidates.max(0) + emission[frame]
    end = states - 1 if score[states - 1] >= score[states - 2] else states - 2
    if not math.isfinite(score[end]):
        return None
    state = end
    owner = np.full(frames, -1)
    for frame in range(frames - 1, -1, -1):
        if state % 2 == 1:
            owner[frame] = state // 2
        state -= steps[frame, state]
    return owner
