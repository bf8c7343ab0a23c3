"""A deterministic, fast stand-in for the ONNX sentence encoder, for tests.

``HashingEncoder`` embeds a text as its bag of lower-cased words, each word hashed (blake2b) to
one of ``dim`` buckets, L2-normalised. Texts that share words are similar; the same text always
gives the same vector, in every process. It has the encoder interface the runtime uses:
``dim``, ``fingerprint``, ``encode(texts)`` and ``encode_one(text)``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")


class HashingEncoder:
    """Hashing bag-of-words encoder.

    Args:
        dim: Vector dimension.
        salt: Changes every word's bucket, and so the fingerprint: two encoders with different
            salts are "different models" (for encoder-change tests).

    Attributes:
        calls: Number of ``encode`` calls so far.
        texts_encoded: Number of texts encoded so far.
    """

    def __init__(self, dim: int = 64, salt: str = "") -> None:
        self.dim = dim
        self.salt = salt
        self.fingerprint = hashlib.sha256(f"HashingEncoder/v1/{dim}/{salt}".encode()).hexdigest()
        self.calls = 0
        self.texts_encoded = 0

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Return an (n, dim) float32 array of L2-normalised vectors, in input order."""
        self.calls += 1
        self.texts_encoded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            # Punctuation-only texts still get a vector: fall back to whitespace tokens.
            words = _WORD.findall(text.lower()) or text.split()
            for word in words:
                digest = hashlib.blake2b(f"{self.salt}\x00{word}".encode(), digest_size=8).digest()
                out[row, int.from_bytes(digest, "little") % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    def encode_one(self, text: str) -> np.ndarray:
        """Return the (dim,) vector of one text."""
        return self.encode([text])[0]


def sample_items(n: int, seed: int = 0, prefix: str = "r") -> list[dict]:
    """Return ``n`` LaMP-like items ``{id, text, tag, date}`` with varied, distinct texts.

    Each text is ten words drawn from a 400-word vocabulary, so texts share some words (search
    has something to rank) and ties in similarity are rare. Tags cycle through doc/tests/refs.
    """
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(400)]
    tags = ("doc", "tests", "refs")
    return [
        {
            "id": f"{prefix}{i}",
            "text": " ".join(rng.choice(vocabulary, size=10)),
            "tag": tags[i % 3],
            "date": f"20{10 + i % 15:02d}-0{1 + i % 9}-1{i % 10}T12:00:00+02:00",
        }
        for i in range(n)
    ]
