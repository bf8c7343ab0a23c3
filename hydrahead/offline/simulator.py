"""A SIMULATED LLM: deterministic answers computed from the prompt text. NOT a language model.

hydrahead talks to a black-box LLM over an OpenAI-compatible API. Where none can be reached
(tests, CI, offline demos) this simulator stands in for it behind
:class:`~hydrahead.offline.server.OfflineLLMServer`. Every response it makes says so
(``"model": "hydrahead-offline-simulator"``, ``"system_fingerprint":
"hydrahead-offline-simulator-v1"`` and an ``x_hydrahead_simulator`` note). It is built so that
personalisation is *measurable* with it: better-chosen history in the prompt gives better
answers. Numbers measured with it say nothing about how a real LLM would do.

It is the ``default`` member of a family of simulated LLMs that read prompts by other
mechanisms (:mod:`hydrahead.offline.family`); they reuse its prompt reading, world prior,
generation candidates, sampling and response shape (the functions below the class), and its
own answers are unchanged by them.

Contract
--------
1. **A pure function of the request.** It reads only ``messages``, ``n``, ``temperature``,
   ``seed`` and ``max_tokens`` (``max_completion_tokens``) of the body; nothing about users,
   stores or gold labels beyond what the prompt text says. It parses the prompt layout of
   :mod:`hydrahead.runtime.tasks.base` (instruction, ``Options:`` line, examples with
   ``Answer:`` lines, query); from a prompt in another layout it still answers (the whole
   prompt is then the query).
2. **Classification / ratings** (the prompt has an ``Options:`` line) score each option ``l``::

       score(l) = a * prior(l) + b * sum_examples (sim(q, ex)**gamma + eps) * [answer(ex) == l]
       p(l) = exp(score(l) / T) / sum_l' exp(score(l') / T)

   ``sim`` is the cosine of log-tf bags of words (lower-cased, stop words removed, plural
   ``s`` stripped) of the query and the example text. ``prior`` is a fixed, user-independent
   "world knowledge" in [0, 1): ``1 - exp(-hits / 2)`` where ``hits`` counts the option's own
   words (twice) and the words of a small fixed keyword table (for the git-lamp areas, LaMP-2's
   movie tags and LaMP-2N's news categories) found in the query. For ratings (all options are
   numbers) the prior is ``1 - |l - r0| / (max - min)`` where ``r0`` moves from the middle of
   the scale toward its ends by the balance of a tiny sentiment lexicon. For options that the
   query spells out (LaMP-1's ``[1]: "..."``) the prior is the similarity of the reference to the
   rest of the query, and an example without an answer adds ``b * sim(reference, ex)**gamma``.
   ``eps`` is a small pull of every example's label whatever its similarity (LLMs copy the
   labels they are shown), so unrelated history misleads a little. Defaults: ``a = 2.0``,
   ``b = 6.0``, ``gamma = 2.0``, ``eps = 0.05`` (see :class:`SimulatorParams`).
3. **Sampling.** ``temperature == 0`` answers the argmax (``n`` times). With ``temperature > 0``
   it draws ``n`` independent samples from ``p`` at that temperature, *with* replacement, as
   OpenAI, vLLM and Ollama do: a likely answer comes back several times, so the vote share of
   the ``n`` samples carries the model's confidence. The random generator is seeded from a
   SHA-256 of the five request fields above (``seed`` included): the same request always gets
   the same candidates, another ``seed`` (generally) other ones.
4. **Generation** (no ``Options:`` line): candidates are extractive / compressive variants of
   the query (first sentence, its leading clause, the sentence from an action verb such as
   "teaches ..." on, the densest key-word window, the key words alone), each fitted to a target
   length. Their style comes from the examples' answers (or, if the examples carry no answers,
   their texts), each example weighing ``sim(q, ex)**gamma + 0.05``: the target length (weighted
   median of answer lengths in words), a ``prefix: `` habit and which prefix (weighted vote,
   plus a bonus for a prefix the query mentions), lower or upper case first letter, a
   trailing period. Without examples the style is neutral (8 words, capitalised, no prefix, no
   period). Candidates are scored by closeness to the target length and key-word density and
   sampled like labels. ``max_tokens`` bounds the number of words.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.tasks.base import (ANSWER_PREFIX, EXAMPLE_HEADER, EXAMPLES_HEADER, OPTIONS_PREFIX,
                          OPTIONS_SEPARATOR, QUERY_HEADER)

SIMULATOR_MODEL = "hydrahead-offline-simulator"
SIMULATOR_FINGERPRINT = "hydrahead-offline-simulator-v1"
# The one notice every place that shows simulated answers gives (responses, the server, the
# CLI, the demo, quality reports).
SIMULATOR_NOTE = ("OFFLINE SIMULATED LLM: answers come from hydrahead's offline simulator, a "
                  "SIMULATOR for tests and demos, not a language model; they are computed "
                  "deterministically from the prompt text")

MAX_N = 128
NEUTRAL_LENGTH = 8
STYLE_FLOOR = 0.05  # every example votes on style a little, however dissimilar


@dataclass(frozen=True)
class SimulatorParams:
    """The simulator's fixed constants (module docstring, points 2 and 4).

    Attributes:
        prior_weight: ``a``, weight of the world prior.
        example_weight: ``b``, weight of the in-context examples.
        similarity_power: ``gamma``; > 1 makes close examples count much more than loose ones.
        label_bias: ``eps``, the pull of an example's label whatever its similarity (LLMs copy
            the labels they see: majority-label bias).
        length_weight: Generation: penalty per relative deviation from the target length.
        keyword_weight: Generation: reward for key-word density.
        prefix_query_bonus: Generation: vote added to a prefix that the query mentions.
    """

    prior_weight: float = 2.0
    example_weight: float = 6.0
    similarity_power: float = 2.0
    label_bias: float = 0.05
    length_weight: float = 2.0
    keyword_weight: float = 1.0
    prefix_query_bonus: float = 0.3


# ------------------------------------------------------------------------------ prompt reading
@dataclass(frozen=True)
class Example:
    """One in-context example read back from a prompt."""

    text: str
    answer: str | None


@dataclass(frozen=True)
class ParsedPrompt:
    """What the simulator reads from a prompt."""

    instruction: str
    options: tuple[str, ...]
    examples: tuple[Example, ...]
    query: str
    structured: bool  # the prompt had hydrahead's layout (a "### Query" section)


_SECTION = re.compile(
    "^(" + re.escape(EXAMPLE_HEADER).replace(re.escape("{index}"), r"\d+") + "|"
    + re.escape(QUERY_HEADER) + r")[ \t]*$", re.MULTILINE)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Read instruction, options, examples and query from a prompt in the tasks' layout.

    A prompt in any other layout gives ``structured=False`` with the whole prompt (minus an
    ``Options:`` line) as the query.
    """
    sections = list(_SECTION.finditer(prompt))
    head = prompt[: sections[0].start()] if sections else prompt
    options: tuple[str, ...] = ()
    head_lines = []
    for line in head.splitlines():
        if line.startswith(OPTIONS_PREFIX) and not options:
            options = tuple(o.strip() for o in line[len(OPTIONS_PREFIX):].split(
                OPTIONS_SEPARATOR.strip()) if o.strip())
        elif line.strip() != EXAMPLES_HEADER:
            head_lines.append(line)
    instruction = "\n".join(head_lines).strip()
    if not any(m.group(1) == QUERY_HEADER for m in sections):
        return ParsedPrompt(instruction="", options=options, examples=(),
                            query=instruction, structured=False)
    examples, query = [], ""
    for i, m in enumerate(sections):
        end = sections[i + 1].start() if i + 1 < len(sections) else len(prompt)
        body = prompt[m.end():end].strip("\n")
        text, answer = _split_answer(body)
        if m.group(1) == QUERY_HEADER:
            query = text
        else:
            examples.append(Example(text=text, answer=answer))
    return ParsedPrompt(instruction, options, tuple(examples), query, True)


def _split_answer(body: str) -> tuple[str, str | None]:
    lines = body.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(ANSWER_PREFIX):
            answer = lines[i][len(ANSWER_PREFIX):].strip()
            return "\n".join(lines[:i]).strip(), (answer or None)
    return body.strip(), None


# ---------------------------------------------------------------------------- bags of words
_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else etc even
ever every few for from further get gets got had has have having he her here hers herself him
himself his how however i if in into is it its itself just least less let like may me might more
most much must my myself neither no nor not now of off on once only or other others our ours
ourselves out over own same shall she should since so some such than that the their theirs them
themselves then there these they this those though through thus to too under until up upon us
use used using very via was we were what when where whether which while who whom whose why will
with within without would yet you your yours yourself yourselves one two also e g ie eg
""".split())

_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Lower-cased, stemmed words of ``text`` without stop words."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1]


def bag(text: str) -> dict[str, float]:
    """Log-tf bag of words of ``text``."""
    return {w: 1.0 + math.log(c) for w, c in Counter(tokens(text)).items()}


def cosine(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Cosine similarity of two bags (0 if either is empty)."""
    if not a or not b:
        return 0.0
    if len(a) > len(b):
        a, b = b, a
    dot = sum(v * b.get(w, 0.0) for w, v in a.items())
    na = math.sqrt(sum(v * v for v in a.values()))
    nb = math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb)


# ------------------------------------------------------------------------- world knowledge
def _kw(spec: str) -> tuple[str, ...]:
    return tuple(_stem(w) for w in spec.split())


KEYWORDS: dict[str, tuple[str, ...]] = {
    # git-lamp areas
    "tests": _kw("test tests testsuite expect_success test_must_fail harness prove lib-test "
                 "testcase"),
    "doc": _kw("documentation doc docs manual manpage asciidoc typo typos wording grammar "
               "spelling explain document describe"),
    "git-gui": _kw("gui tcl tk dialog window menu button"),
    "gitweb": _kw("gitweb cgi web html css browser href url javascript feed"),
    "gitk": _kw("gitk tk tcl graph window view"),
    "git-svn": _kw("svn subversion revision trunk"),
    "completion": _kw("completion bash zsh complete completing completes"),
    "Makefile": _kw("makefile make build compiler cflags ldflags gcc clang install link "
                    "compile"),
    "refs": _kw("ref refs refname reflog symref backend packed transaction"),
    "diff": _kw("diff hunk hunks whitespace stat color diffcore"),
    "i18n": _kw("i18n translation translate translated gettext l10n localization translator"),
    "config": _kw("config configuration variable setting"),
    "git-p4": _kw("p4 perforce depot changelist"),
    "merge-recursive": _kw("merge recursive conflict conflicts ort"),
    "sequencer": _kw("sequencer rebase cherry pick revert todo squash fixup"),
    # LaMP-2 movie tags
    "sci-fi": _kw("space alien future robot planet scientist spaceship galaxy"),
    "based on a book": _kw("novel book author adaptation adapted bestselling"),
    "comedy": _kw("comedy funny hilarious comic laugh humor"),
    "action": _kw("action fight chase mission agent battle gun explosive"),
    "twist ending": _kw("twist mystery secret reveal discover"),
    "dystopia": _kw("dystopian totalitarian regime oppressive rebellion"),
    "dark comedy": _kw("dark satire absurd black"),
    "classic": _kw("classic legendary timeless masterpiece"),
    "psychology": _kw("psychological mind mental obsession psychiatrist madness memory"),
    "fantasy": _kw("magic wizard dragon kingdom fairy sorcerer quest witch"),
    "romance": _kw("love romantic relationship marriage wedding heart"),
    "thought-provoking": _kw("meaning philosophical moral existence question"),
    "social commentary": _kw("society class racism political poverty inequality"),
    "violence": _kw("violent kill murder gang blood brutal revenge"),
    "true story": _kw("true real biography historical event"),
    # LaMP-2N news categories
    "travels": _kw("travel trip destination hotel vacation flight tourist beach"),
    "education": _kw("school student teacher college university learning"),
    "parents": _kw("parent child kid baby mom dad parenting daughter son"),
    "style & beauty": _kw("fashion beauty makeup hair dress wear model"),
    "entertainment": _kw("movie film star actor actress show music celebrity album"),
    "food & drink": _kw("food recipe cook restaurant drink wine eat meal chef"),
    "science & technology": _kw("science technology tech research computer app scientist"),
    "business": _kw("business company market ceo economy stock industry"),
    "sports": _kw("game team sport player nfl nba coach season olympic"),
    "healthy living": _kw("health healthy exercise sleep stress wellness diet"),
    "women": _kw("women woman female feminist gender girl"),
    "politics": _kw("president election republican democrat congress senate political vote"),
    "crime": _kw("police crime arrested shooting suspect killed charged prison"),
    "culture & arts": _kw("art artist museum culture theater painting exhibition poet"),
    "religion": _kw("religion religious church god faith pope muslim christian spiritual"),
}
"""Fixed per-label key words: the simulator's user-independent "world knowledge"."""

POSITIVE_WORDS = frozenset(_kw("great excellent love loved perfect best good nice recommend "
                               "happy easy amazing awesome fantastic favorite works wonderful"))
NEGATIVE_WORDS = frozenset(_kw("bad poor terrible broke broken waste disappointed disappointing "
                               "return returned awful worst cheap useless problem not never"))

_ACTION_VERBS = ("teach", "add", "fix", "make", "allow", "introduce", "remove", "use", "avoid",
                 "support", "move", "rename", "convert", "replace", "drop", "let", "show",
                 "update", "change", "simplify", "refactor", "improve", "stop", "mark", "clean")
_FILLER = re.compile(r"^(?:this|the)\s+(?:patch|commit|change|series|function)\s+|"
                     r"^(?:in this patch,?|currently,?|so,?|also,?|now,?|then,?)\s+",
                     re.IGNORECASE)
_PREFIX = re.compile(r"^([A-Za-z0-9_./*+\-]{1,32}):\s+(?=\S)")


# --------------------------------------------------------------------------------- simulator
@dataclass(frozen=True)
class _Request:
    prompt: str
    n: int
    temperature: float
    max_tokens: int | None
    seed: int | None
    digest: bytes = field(repr=False, default=b"")
    model: str = SIMULATOR_MODEL


class SimulatedLLM:
    """The offline SIMULATOR (not a language model); see the module docstring for its contract.

    It is the ``default`` member of the family of simulated LLMs
    (:mod:`hydrahead.offline.family`); the other members subclass it and replace how options
    are scored (:meth:`option_scores`), how generation candidates are made and scored
    (:meth:`generation_pool`) or how answers are written (:meth:`candidates`).

    Args:
        params: Its constants; the defaults are the documented ones.
    """

    name: str = "default"
    """The member name (``hydrahead llm members``)."""
    summary: str = "prior + similarity-weighted example votes; extractive answers in their style"
    """One line saying what the member does."""
    fingerprint: str = SIMULATOR_FINGERPRINT
    """The ``system_fingerprint`` of its responses."""

    def __init__(self, params: SimulatorParams | None = None) -> None:
        self.params = params or SimulatorParams()

    # ------------------------------------------------------------------------- public API
    def complete(self, request_body: Mapping[str, Any]) -> dict[str, Any]:
        """Answer an OpenAI chat-completions request body with an OpenAI-shaped response.

        Raises:
            InvalidInputError: The body is not a valid chat-completions request.
        """
        req = _read_request(request_body)
        texts = self.candidates(req.prompt, n=req.n, temperature=req.temperature,
                                max_tokens=req.max_tokens, rng=self.request_rng(req.digest))
        prompt_tokens = _count_tokens(req.prompt)
        completion_tokens = sum(_count_tokens(t) for t in texts)
        return {
            "id": "chatcmpl-sim-" + req.digest.hex()[:24],
            "object": "chat.completion",
            "created": int(time.time()),  # the answer is a function of the request; this is not
            "model": req.model,  # the name asked for, as servers do; system_fingerprint says sim
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "logprobs": None, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "x_hydrahead_simulator": SIMULATOR_NOTE,
        }

    def request_rng(self, digest: bytes) -> random.Random:
        """The random generator of one request, seeded by the digest of its fields."""
        return random.Random(digest)

    def candidates(self, prompt: str, *, n: int = 1, temperature: float = 1.0,
                   max_tokens: int | None = None, rng: random.Random | None = None) -> list[str]:
        """``n`` answers to ``prompt`` (what :meth:`complete` puts in its choices)."""
        rng = rng or random.Random(0)
        parsed = parse_prompt(prompt)
        if parsed.options:
            scores = self.option_scores(parsed)
            return _sample(list(scores), list(scores.values()), n, temperature, rng)
        pool = self.generation_pool(parsed, max_tokens)
        return _sample([t for t, _ in pool], [s for _, s in pool], n, temperature, rng)

    def label_distribution(self, prompt: str, temperature: float = 1.0) -> dict[str, float]:
        """``p(label)`` for a prompt with an ``Options:`` line (one-hot on the argmax at 0).

        Raises:
            InvalidInputError: The prompt has no ``Options:`` line.
        """
        parsed = parse_prompt(prompt)
        if not parsed.options:
            raise InvalidInputError("the prompt has no 'Options:' line, so it has no labels")
        scores = self.option_scores(parsed)
        labels = list(scores)
        if temperature <= 0:
            best = _argmax(list(scores.values()))
            return {label: float(i == best) for i, label in enumerate(labels)}
        probs = _softmax(list(scores.values()), temperature)
        return dict(zip(labels, probs))

    # ---------------------------------------------------------------------- classification
    def option_scores(self, parsed: ParsedPrompt) -> dict[str, float]:
        """``score(l)`` of every option (module docstring, point 2)."""
        p = self.params
        world = world_prior(parsed)
        query_bag, prior, desc_bags = world.query_bag, world.prior, world.references
        scores = {o: p.prior_weight * prior[o] for o in parsed.options}
        for ex in parsed.examples:
            ex_bag = bag(ex.text)
            if ex.answer is None:
                for o, d in desc_bags.items():
                    scores[o] += p.example_weight * cosine(d, ex_bag) ** p.similarity_power
                continue
            label = _match_option(ex.answer, parsed.options)
            if label is not None:
                scores[label] += p.example_weight * (
                    cosine(query_bag, ex_bag) ** p.similarity_power + p.label_bias)
        return scores

    # -------------------------------------------------------------------------- generation
    def generation_pool(self, parsed: ParsedPrompt,
                        max_tokens: int | None = None) -> list[tuple[str, float]]:
        """All generation candidates with their scores, best first (point 4)."""
        p = self.params
        found = generation_candidates(parsed, _style(parsed, p), max_tokens)
        return best_first((c.text, c.default_score(p)) for c in found)


# ---------------------------------------------------------------------- shared by the family
@dataclass(frozen=True)
class WorldPrior:
    """The user-independent prior of a prompt's options (module docstring, point 2).

    Attributes:
        query_bag: The query's bag of words.
        prior: ``prior(l)`` of every option, in [0, 1].
        references: For options the query spells out (LaMP-1's ``[1]: "..."``), each option's
            reference text as a bag; empty otherwise.
    """

    query_bag: dict[str, float]
    prior: dict[str, float]
    references: dict[str, dict[str, float]]


def world_prior(parsed: ParsedPrompt) -> WorldPrior:
    """The world prior of ``parsed``'s options: spelled-out references, ratings or key words."""
    query_bag = bag(parsed.query)
    refs = _spelled_out_options(parsed.query, parsed.options)
    if refs:
        rest = parsed.query
        for text in refs.values():
            rest = rest.replace(text, " ")
        rest_bag = bag(rest)
        desc_bags = {o: bag(refs[o]) for o in parsed.options}
        prior = {o: cosine(rest_bag, desc_bags[o]) for o in parsed.options}
    elif _all_numbers(parsed.options):
        prior = _rating_prior(query_bag, parsed.options)
        desc_bags = {}
    else:
        prior = _keyword_prior(parsed.query, query_bag, parsed.options)
        desc_bags = {}
    return WorldPrior(query_bag, prior, desc_bags)


@dataclass(frozen=True)
class GenerationCandidate:
    """One generation candidate before scoring (module docstring, point 4).

    Attributes:
        text: The answer as it would be sent.
        words: Its number of content words (before prefix and style).
        target: The target length (words) of the style.
        bonus: How plausible its kind of variant is (action-verb clause 0.6 ... key words 0).
        prefix_score: The style's vote for its ``prefix: `` (0 without one).
        density: The share of its words that are key words of the query.
        rank: The index of its variant, most plausible first.
    """

    text: str
    words: int
    target: float
    bonus: float
    prefix_score: float
    density: float
    rank: int

    def default_score(self, p: SimulatorParams) -> float:
        """The default simulator's score: plausibility, prefix vote, key words, length."""
        return (self.bonus + self.prefix_score + p.keyword_weight * self.density
                - p.length_weight * abs(self.words - self.target) / self.target
                - 0.01 * self.rank)


def generation_candidates(parsed: ParsedPrompt, style: _Style,
                          max_tokens: int | None = None) -> list[GenerationCandidate]:
    """Every extractive variant of the query in every prefix of ``style``, in order."""
    query = parsed.query if parsed.query.strip() else parsed.instruction
    weights = Counter(tokens(query))
    variants = _content_variants(query, weights, style.length)
    limit = max_tokens if max_tokens and max_tokens > 0 else None
    found = []
    for rank, (words, bonus) in enumerate(variants):
        for prefix, prefix_score in style.prefixes or [("", 0.0)]:
            text = _styled(words, prefix, style, limit)
            if not text:
                continue
            n_words = len(words)
            density = (sum(weights.get(_stem(w.lower().strip(".,;:()\"'`")), 0) > 0
                           for w in words) / max(n_words, 1))
            found.append(GenerationCandidate(text, n_words, style.length, bonus, prefix_score,
                                             density, rank))
    return found


def best_first(scored: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Distinct texts with their best score, best first (``"..."`` if there are none)."""
    pool: dict[str, float] = {}
    for text, score in scored:
        if text not in pool or pool[text] < score:
            pool[text] = score
    if not pool:
        pool["..."] = 0.0
    return sorted(pool.items(), key=lambda kv: -kv[1])


# ------------------------------------------------------------------------- request handling
def _read_request(body: Mapping[str, Any]) -> _Request:
    if not isinstance(body, Mapping):
        raise InvalidInputError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError("'messages' must be a non-empty list of {role, content}")
    contents = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InvalidInputError(f"messages[{i}] must be an object with a 'role' string")
        contents.append((m["role"], _content_text(m.get("content"), i)))
    user = [c for role, c in contents if role == "user"]
    prompt = user[-1] if user else "\n\n".join(c for _, c in contents)
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidInputError(f"'n' must be an integer from 1 to {MAX_N}")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not 0 <= temperature <= 2:
        raise InvalidInputError("'temperature' must be a number from 0 to 2")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise InvalidInputError("'max_tokens' must be a positive integer")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInputError("'seed' must be an integer")
    if body.get("stream"):
        raise InvalidInputError("'stream' is not supported by the offline simulator")
    canonical = json.dumps({"messages": [{"role": r, "content": c} for r, c in contents],
                            "n": n, "temperature": float(temperature), "max_tokens": max_tokens,
                            "seed": seed}, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        model = SIMULATOR_MODEL
    return _Request(prompt, n, float(temperature), max_tokens, seed, digest, model)


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        texts = [t for t in parts if isinstance(t, str)]
        if len(texts) == len(parts):
            return "\n".join(texts)
    raise InvalidInputError(f"messages[{index}].content must be a string or a list of text parts")


def _count_tokens(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


# ---------------------------------------------------------------------------------- sampling
def _softmax(scores: Sequence[float], temperature: float) -> list[float]:
    top = max(scores)
    exps = [math.exp((s - top) / temperature) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _sample(items: list[str], scores: list[float], n: int, temperature: float,
            rng: random.Random) -> list[str]:
    """``n`` draws: the argmax at temperature 0, else i.i.d. draws from the softmax."""
    if temperature <= 0:
        return [items[_argmax(scores)]] * n
    picks = rng.choices(range(len(items)), weights=_softmax(scores, temperature), k=n)
    return [items[i] for i in picks]


# --------------------------------------------------------------------------- option scoring
def _match_option(answer: str, options: Sequence[str]) -> str | None:
    text = answer.strip()
    if text in options:
        return text
    lowered = text.lower().rstrip(".")
    for o in options:
        if o.lower() == lowered:
            return o
    if _all_numbers(options):
        m = re.search(r"\d+(?:\.\d+)?", text)
        if m:
            for o in options:
                if float(o) == float(m.group()):
                    return o
    return None


def _all_numbers(options: Sequence[str]) -> bool:
    try:
        [float(o) for o in options]
    except ValueError:
        return False
    return True


def _spelled_out_options(query: str, options: Sequence[str]) -> dict[str, str]:
    """Texts that the query gives for options written like ``[1]: "..."``, if all have one."""
    refs = {}
    for o in options:
        m = re.search(re.escape(o) + r'\s*:\s*"([^"\n]+)"', query)
        if not m:
            return {}
        refs[o] = m.group(1)
    return refs


def _keyword_prior(query: str, query_bag: Mapping[str, float],
                   options: Sequence[str]) -> dict[str, float]:
    counts = Counter(tokens(query))
    lowered = query.lower()
    prior = {}
    for o in options:
        phrase = re.escape(o.lower()).replace(r"\-", r"[-\s]?").replace(r"\ ", r"[-\s]+")
        name_hits = len(re.findall(r"(?<![\w-])" + phrase + r"s?(?![\w-])", lowered))
        keyword_hits = sum(math.log1p(counts.get(k, 0)) for k in KEYWORDS.get(o, ()))
        prior[o] = 1.0 - math.exp(-(2.0 * name_hits + keyword_hits) / 2.0)
    return prior


def _rating_prior(query_bag: Mapping[str, float], options: Sequence[str]) -> dict[str, float]:
    pos = sum(v for w, v in query_bag.items() if w in POSITIVE_WORDS)
    neg = sum(v for w, v in query_bag.items() if w in NEGATIVE_WORDS)
    values = [float(o) for o in options]
    lo, hi = min(values), max(values)
    mid = (lo + hi) / 2
    balance = (pos - neg) / (pos + neg + 0.5)
    target = mid + balance * (hi - mid)
    span = (hi - lo) or 1.0
    return {o: 1.0 - abs(float(o) - target) / span for o in options}


# -------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class _Style:
    length: float
    prefixes: list[tuple[str, float]]  # (prefix, score); empty: no prefix habit
    lower_first: bool
    period: bool


def _style(parsed: ParsedPrompt, p: SimulatorParams,
           weights: Sequence[float] | None = None) -> _Style:
    """The answer style the examples show, each weighted by its similarity to the query (or
    by ``weights``, one per example; an example of weight 0 does not count)."""
    query_bag = bag(parsed.query)
    samples = []
    for i, ex in enumerate(parsed.examples):
        answer = ex.answer if ex.answer is not None else ex.text
        answer = " ".join(answer.split())
        if answer:
            if weights is None:
                w = cosine(query_bag, bag(ex.text)) ** p.similarity_power + STYLE_FLOOR
            elif weights[i] > 0:
                w = weights[i]
            else:
                continue
            samples.append((answer, w))
    if not samples:
        return _Style(NEUTRAL_LENGTH, [], False, False)
    total = sum(w for _, w in samples)
    prefix_votes: Counter[str] = Counter()
    lengths, lower, period = [], 0.0, 0.0
    for answer, w in samples:
        m = _PREFIX.match(answer)
        body = answer[m.end():] if m else answer
        if m:
            prefix_votes[m.group(1)] += w
        lengths.append((len(body.split()), w))
        first = next((c for c in body if c.isalpha()), "")
        lower += w * first.islower()
        period += w * body.rstrip().endswith(".")
    prefixes: list[tuple[str, float]] = []
    if sum(prefix_votes.values()) >= total / 2:
        query_words = set(_WORD.findall(parsed.query.lower()))
        scored = {}
        for prefix, votes in prefix_votes.items():
            parts = set(_WORD.findall(prefix.lower()))
            mentioned = (bool(parts) and parts <= query_words
                         or prefix.lower() in parsed.query.lower())
            scored[prefix] = votes / total + (p.prefix_query_bonus if mentioned else 0.0)
        ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        prefixes = [(prefix, s) for prefix, s in ranked]
    return _Style(max(2.0, min(30.0, _weighted_median(lengths))), prefixes,
                  lower > total / 2, period > total / 2)


def _weighted_median(pairs: list[tuple[int, float]]) -> float:
    pairs = sorted(pairs)
    half, acc = sum(w for _, w in pairs) / 2, 0.0
    for value, w in pairs:
        acc += w
        if acc >= half:
            return float(value)
    return float(pairs[-1][0])


def _sentences(text: str) -> list[str]:
    text = re.sub(r"\s*\n\s*\n\s*", "\n\n", text.strip())
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'`(])|\n\n", text)
    return [" ".join(s.split()) for s in parts if len(s.split()) >= 2]


def _words(sentence: str) -> list[str]:
    sentence = _FILLER.sub("", sentence.strip())
    return [w for w in sentence.rstrip(".!?;:").split() if w]


_TAIL_WORDS = _STOPWORDS | {"a", "an", "the"}


def _trim(words: list[str], length: int) -> list[str]:
    """The first ``length`` words, without a dangling stop word or comma at the end."""
    out = list(words[: max(1, length)])
    while len(out) > 1 and out[-1].lower().strip(",;:") in _TAIL_WORDS:
        out.pop()
    if out:
        out[-1] = out[-1].rstrip(",;:")
    return out


def _content_variants(query: str, weights: Mapping[str, int],
                      target: float) -> list[tuple[list[str], float]]:
    """(words, bonus) candidates taken from the query, most plausible first."""
    sentences = _sentences(query) or [" ".join(query.split())]
    length = max(2, round(target))
    variants: list[tuple[list[str], float]] = []

    def add(words: list[str], bonus: float) -> None:
        if words:
            variants.append((words, bonus))
            if len(words) > length:
                variants.append((_trim(words, length), bonus))

    # The sentence from its action verb on ("This patch teaches gitweb to ..." -> "teach ...").
    for sentence in sentences[:4]:
        words = _words(sentence)
        for i, w in enumerate(words[:12]):
            base = _verb_base(w)
            if base:
                add([base, *words[i + 1:]], 0.6)
                break
        else:
            continue
        break
    first = _words(sentences[0])
    add(first, 0.4)
    clause = re.split(r",\s|;\s|\s(?:because|so that|which|when|but|since|as)\s",
                      " ".join(first), maxsplit=1)[0].split()
    if 3 <= len(clause) < len(first):
        add(clause, 0.3)
    # The window of `length` words with the most key words, inside one sentence (key phrase).
    windows: list[tuple[float, int, list[str]]] = []
    for sentence in sentences:
        words = _words(sentence)
        for i in range(max(1, len(words) - length + 1)):
            window = words[i:i + length]
            windows.append((sum(weights.get(_stem(w.lower().strip(".,;:()\"'`")), 0)
                                for w in window) / len(window), -len(windows), window))
    if windows:
        add(_trim(max(windows)[2], length), 0.2)
    # The first sentence's key words alone (a compressive variant).
    keys = [w for w in first if w.lower() not in _STOPWORDS]
    if 2 <= len(keys) < len(first):
        add(keys, 0.0)
    return variants


def _verb_base(word: str) -> str | None:
    w = word.lower()
    for verb in _ACTION_VERBS:
        forms = {verb, verb + "s", verb + "es", (verb[:-1] if verb.endswith("e") else verb) + "es"}
        if w in forms:
            return verb
    return None


def _styled(words: list[str], prefix: str, style: _Style, limit: int | None) -> str:
    if not words:
        return ""
    words = list(words)
    first = words[0]
    if first[:1].isalpha() and not any(c.isupper() for c in first[1:]):
        head = first[0].lower() if style.lower_first else first[0].upper()
        words[0] = head + first[1:]
    text = " ".join(words).rstrip(".!?,;:")
    if style.period:
        text += "."
    if prefix:
        text = f"{prefix}: {text}"
    if limit is not None:
        parts = text.split()
        if len(parts) > limit:
            text = " ".join(parts[:limit])
    return text
