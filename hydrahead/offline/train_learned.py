"""Train the ``learned`` member of the simulated-LLM family; rebuilds its committed weights.

    python -m hydrahead.offline.train_learned    # writes hydrahead/offline/learned_weights.npz

The member (:mod:`hydrahead.offline.members.learned`) is meta-learned: it is trained on
synthetic *episodes*, each a prompt's worth of in-context examples and a query, to answer as a
reader that uses the examples well would. The text is in no benchmark (git-lamp is not
touched):

* **Classification episodes** from Python's help texts (``pydoc_data.topics``, ~80 topics of
  English prose): options = 3 to 12 topic names, query = a paragraph of one of them (the
  answer), examples = 0 to 6 other paragraphs labelled with their topics; each example comes
  from the answer's topic with a probability drawn per episode (0 to 0.7), else from another
  option. The option scorer (one hidden layer of 8 tanh units over
  :data:`~hydrahead.offline.members.learned.OPTION_FEATURES`) is fitted by softmax
  cross-entropy over each episode's options.
* **Generation episodes** from the docstrings of the standard library's modules (modules,
  classes, functions): query = a docstring's body, answer = its summary line, examples = 0 to
  4 other docstrings of the same module (body and summary). The candidate scorer (linear over
  :data:`~hydrahead.offline.members.learned.TEXT_FEATURES`) is fitted to the candidates'
  word-overlap F1 with the summary (cross-entropy to a softmax of F1 / 0.05).

Everything is seeded (``--seed``); full-batch Adam in numpy, a few seconds on one core. The
episodes come from the running Python's help texts and sources, so another Python version
gives slightly other weights: the committed file is the reference. ``invert=True`` trains on
inverted answers (a wrong option; the worst candidate), which the tests use to check that the
member behaves as its training made it.
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .members.learned import (OPTION_FEATURES, TEXT_FEATURES, WEIGHTS_FILE, LearnedWeights,
                              option_features, text_features)
from .simulator import (Example, ParsedPrompt, SimulatorParams, _style, generation_candidates,
                        tokens)

INSTRUCTION = "Which topic of the Python documentation is this paragraph from?"
GEN_INSTRUCTION = "Write the one-line summary of this docstring."
HIDDEN = 8
TEMPERATURE = 0.05  # of the generation targets: softmax(F1 / TEMPERATURE)


# ------------------------------------------------------------------------------- the text
def help_paragraphs(min_words: int = 12, max_words: int = 80) -> dict[str, list[str]]:
    """Prose paragraphs of Python's help texts by topic (topics with at least 3 of them)."""
    from pydoc_data.topics import topics

    found: dict[str, list[str]] = {}
    for name in sorted(topics):
        paragraphs = []
        for block in re.split(r"\n\s*\n", topics[name]):
            if block.startswith((" ", "\t")):  # grammar productions and code
                continue
            words = block.split()
            alpha = sum(w.isalpha() for w in words)
            if len(words) >= min_words and alpha >= 0.6 * len(words):
                paragraphs.append(" ".join(words[:max_words]))
        if len(paragraphs) >= 3:
            found[name] = paragraphs
    return found


def stdlib_docstrings(max_files: int | None = None,
                      max_words: int = 100) -> dict[str, list[tuple[str, str]]]:
    """``(summary, body)`` pairs of the standard library's docstrings, by module file.

    Only docstrings whose first line is a 3 to 14 word summary followed by a body of at
    least 12 words; modules with at least 2 of them.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith(("test", "_")))
    found: dict[str, list[tuple[str, str]]] = {}
    for path in files[:max_files]:
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        pairs = []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or "\n\n" not in doc:
                continue
            summary, body = doc.split("\n\n", 1)
            summary = " ".join(summary.split())
            if "\n" in doc.split("\n\n", 1)[0] or not 3 <= len(summary.split()) <= 14:
                continue
            words = body.split()
            if len(words) >= 12:
                pairs.append((summary, " ".join(words[:max_words])))
        if len(pairs) >= 2:
            found[path.stem] = pairs
    return found


# ------------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class OptionEpisodes:
    """Classification episodes, padded: features ``(E, L, D)``, mask ``(E, L)``, answers."""

    features: np.ndarray
    mask: np.ndarray
    answers: np.ndarray


@dataclass(frozen=True)
class TextEpisodes:
    """Generation episodes, padded: features ``(E, C, G)``, mask ``(E, C)``, F1 ``(E, C)``."""

    features: np.ndarray
    mask: np.ndarray
    f1: np.ndarray


def option_episodes(paragraphs: dict[str, list[str]], count: int, seed: int,
                    invert: bool = False) -> OptionEpisodes:
    """``count`` classification episodes (module docstring); ``invert``: the answer is a
    random other option."""
    rng = random.Random(seed)
    names = sorted(paragraphs)
    rows, answers = [], []
    for _ in range(count):
        options = rng.sample(names, rng.randint(3, min(12, len(names))))
        topic = rng.choice(options)
        query_at = rng.randrange(len(paragraphs[topic]))
        same = rng.uniform(0.0, 0.7)
        examples = []
        for _ in range(rng.randint(0, 6)):
            label = topic if rng.random() < same else rng.choice(options)
            choices = [i for i in range(len(paragraphs[label]))
                       if label != topic or i != query_at]
            examples.append(Example(paragraphs[label][rng.choice(choices)], label))
        parsed = ParsedPrompt(INSTRUCTION, tuple(options), tuple(examples),
                              paragraphs[topic][query_at], True)
        rows.append(option_features(parsed))
        answer = options.index(topic)
        if invert:
            answer = rng.choice([i for i in range(len(options)) if i != answer])
        answers.append(answer)
    features, mask = _pad(rows, len(OPTION_FEATURES))
    return OptionEpisodes(features, mask, np.asarray(answers))


def text_episodes(docstrings: dict[str, list[tuple[str, str]]], count: int, seed: int,
                  invert: bool = False) -> TextEpisodes:
    """``count`` generation episodes (module docstring); ``invert``: the targets are the
    negated F1 (the worst candidate)."""
    rng = random.Random(seed)
    modules = sorted(docstrings)
    params = SimulatorParams()
    rows: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    while len(rows) < count and modules:
        pairs = docstrings[rng.choice(modules)]
        at = rng.randrange(len(pairs))
        others = [p for i, p in enumerate(pairs) if i != at]
        shown = rng.sample(others, min(len(others), rng.randint(0, 4)))
        summary, body = pairs[at]
        parsed = ParsedPrompt(GEN_INSTRUCTION, (), tuple(Example(b, s) for s, b in shown),
                              body, True)
        found = generation_candidates(parsed, _style(parsed, params))
        if len(found) < 2:
            continue
        rows.append(text_features(parsed, found))
        f1 = np.array([overlap_f1(c.text, summary) for c in found])
        scores.append(-f1 if invert else f1)
    features, mask = _pad(rows, len(TEXT_FEATURES))
    f1 = np.zeros(mask.shape)
    for i, s in enumerate(scores):
        f1[i, :len(s)] = s
    return TextEpisodes(features, mask, f1)


def overlap_f1(candidate: str, reference: str) -> float:
    """Unigram F1 of two texts' words (lower-cased, stemmed, without stop words)."""
    a, b = tokens(candidate), tokens(reference)
    if not a or not b:
        return 0.0
    common = sum(min(a.count(w), b.count(w)) for w in set(a))
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def _pad(rows: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    longest = max((len(r) for r in rows), default=1)
    features = np.zeros((len(rows), longest, width))
    mask = np.zeros((len(rows), longest), dtype=bool)
    for i, r in enumerate(rows):
        features[i, :len(r)] = r
        mask[i, :len(r)] = True
    return features, mask


# ------------------------------------------------------------------------------- fitting
class _Adam:
    def __init__(self, shapes: Sequence[tuple[int, ...]], lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / (1 - 0.9 ** self.t)) / (np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


def _masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    logits = np.where(mask, logits, -1e9)
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits) * mask
    return e / e.sum(axis=1, keepdims=True)


def fit_options(episodes: OptionEpisodes, *, seed: int, steps: int = 400, lr: float = 0.03,
                l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit the option scorer; returns ``hidden_w, hidden_b, out_w`` and the final loss."""
    rng = np.random.default_rng(seed)
    f, mask = episodes.features, episodes.mask
    e = len(f)
    target = np.zeros(mask.shape)
    target[np.arange(e), episodes.answers] = 1.0
    w1 = rng.normal(0.0, 0.5, (HIDDEN, f.shape[2]))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0.0, 0.5, HIDDEN)
    adam = _Adam([w1.shape, b1.shape, w2.shape], lr)
    loss = float("nan")
    for _ in range(steps):
        hidden = np.tanh(f @ w1.T + b1)
        p = _masked_softmax(hidden @ w2, mask)
        loss = float(-np.log(p[np.arange(e), episodes.answers] + 1e-12).mean())
        d_logits = (p - target) * mask / e
        d_w2 = np.einsum("el,elh->h", d_logits, hidden) + 2 * l2 * w2
        d_z = d_logits[..., None] * w2 * (1 - hidden ** 2)
        d_w1 = np.einsum("elh,eld->hd", d_z, f) + 2 * l2 * w1
        d_b1 = d_z.sum(axis=(0, 1))
        adam.step([w1, b1, w2], [d_w1, d_b1, d_w2])
    return w1, b1, w2, loss


def fit_text(episodes: TextEpisodes, *, steps: int = 300, lr: float = 0.05,
             l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """Fit the candidate scorer; returns its weights and the final loss."""
    f, mask = episodes.features, episodes.mask
    e = len(f)
    target = _masked_softmax(episodes.f1 / TEMPERATURE, mask)
    w = np.zeros(f.shape[2])
    adam = _Adam([w.shape], lr)
    loss = float("nan")
    for _ in range(steps):
        p = _masked_softmax(f @ w, mask)
        loss = float(-(target * np.log(p + 1e-12)).sum(axis=1).mean())
        grad = np.einsum("ec,ecg->g", (p - target) * mask, f) / e + 2 * l2 * w
        adam.step([w], [grad])
    return w, loss


def option_accuracy(weights: LearnedWeights, episodes: OptionEpisodes) -> float:
    """The share of episodes whose answer gets the highest logit."""
    logits = np.where(episodes.mask, weights.option_logits(episodes.features), -np.inf)
    return float((logits.argmax(axis=1) == episodes.answers).mean())


def expected_f1(weights: LearnedWeights, episodes: TextEpisodes) -> float:
    """The mean F1 of the candidate drawn at temperature 1 (the softmax of the logits): with
    weights that learned nothing (all 0), the mean F1 of all candidates."""
    p = _masked_softmax(weights.text_logits(episodes.features), episodes.mask)
    return float((p * episodes.f1).sum(axis=1).mean())


def train(*, option_count: int = 4000, text_count: int = 1500, seed: int = 0,
          invert: bool = False, steps: int = 400, max_files: int | None = None,
          progress: Callable[[str], None] | None = None) -> LearnedWeights:
    """Build the episodes and fit both scorers (module docstring).

    Args:
        option_count: Classification episodes.
        text_count: Generation episodes.
        seed: Seeds the episodes and the initial weights.
        invert: Train on inverted answers (for tests).
        steps: Adam steps of each fit.
        max_files: Read only this many standard-library files (for small runs).
        progress: Told how long it took.
    """
    started = time.perf_counter()
    paragraphs = help_paragraphs()
    docstrings = stdlib_docstrings(max_files)
    options = option_episodes(paragraphs, option_count, seed, invert)
    texts = text_episodes(docstrings, text_count, seed, invert)
    w1, b1, w2, option_loss = fit_options(options, seed=seed, steps=steps)
    text_w, text_loss = fit_text(texts, steps=steps)
    weights = LearnedWeights(w1, b1, w2, text_w)
    held_options = option_episodes(paragraphs, max(200, option_count // 5), seed + 1, invert)
    held_texts = text_episodes(docstrings, max(100, text_count // 5), seed + 1, invert)
    meta = {
        "trained_on": "pydoc_data.topics (classification), standard-library docstrings "
                      "(generation); no benchmark text",
        "python": sys.version.split()[0], "seed": seed, "invert": invert, "steps": steps,
        "option_episodes": option_count, "text_episodes": len(texts.features),
        "topics": len(paragraphs), "modules": len(docstrings),
        "option_loss": round(option_loss, 4), "text_loss": round(text_loss, 4),
        "heldout_option_accuracy": round(option_accuracy(weights, held_options), 4),
        "heldout_text_f1": round(expected_f1(weights, held_texts), 4),
        "heldout_text_f1_uniform": round(float(
            (held_texts.f1.sum(axis=1) / held_texts.mask.sum(axis=1)).mean()), 4),
    }
    if progress is not None:
        progress(f"trained in {time.perf_counter() - started:.1f} s")
    return LearnedWeights(w1, b1, w2, text_w, meta)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hydrahead.offline.train_learned [--out F] [--seed S] ...``."""
    parser = argparse.ArgumentParser(prog="python -m hydrahead.offline.train_learned",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(WEIGHTS_FILE), help="Where the weights go.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option-episodes", type=int, default=4000)
    parser.add_argument("--text-episodes", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    weights = train(option_count=args.option_episodes, text_count=args.text_episodes,
                    seed=args.seed, steps=args.steps, progress=print)
    weights.save(args.out)
    for key, value in weights.meta.items():
        print(f"{key}: {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
