"""A small, learnable corpus: templated sentences whose next words are predictable from the words before them."""

from __future__ import annotations

import random

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "goat"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
PLACES = ["the garden", "the kitchen", "the park", "the barn", "the river"]


def documents(n: int, seed: int = 0) -> list[str]:
    """`n` distinct documents of two to four templated sentences each."""
    rng = random.Random(seed)
    docs: list[str] = []
    seen: set[str] = set()
    while len(docs) < n:
        sentences = []
        for _ in range(rng.randint(2, 4)):
            name, animal, colour, place = rng.choice(NAMES), rng.choice(ANIMALS), rng.choice(COLOURS), rng.choice(PLACES)
            count = rng.randint(1, 5)
            sentences.append(f"{name} has {count} {colour} {animal}s in {place}.")
        doc = " ".join(sentences)
        if doc not in seen:
            seen.add(doc)
            docs.append(doc)
    return docs
