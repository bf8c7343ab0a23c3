"""Synthetic users with an idiosyncratic history, for end-to-end personalization tests.

Each user's history (task GIT_area) mixes two kinds of records on the same topics:

* the user's own commits, labelled consistently (topic -> area tag), and
* records of a sync bot whose messages use the same topical words, so dense retrieval ranks them
  as high as the user's own, but whose tags are wrong for this user.

A bot record in the prompt pulls the LLM toward a wrong tag, so the helpful history is the user's
own records: something a user's reranker head can learn (the bot's records share a style) and
cosine similarity cannot see.
"""

from __future__ import annotations

import random

TOPICS: dict[str, list[str]] = {
    "tests": [
        "the test suite",
        "test_expect_success",
        "a flaky test script",
        "the prove harness",
        "t7001 test cases",
        "test helper functions",
        "the test library",
    ],
    "doc": [
        "the documentation",
        "the manual page",
        "asciidoc markup",
        "the user guide",
        "typos in the docs",
        "the how-to document",
        "the glossary",
    ],
    "gitk": [
        "gitk",
        "the history viewer",
        "the Tk commit graph",
        "gitk's diff pane",
        "the gitk window",
        "gitk's preferences dialog",
        "gitk highlighting",
    ],
    "completion": [
        "bash completion",
        "zsh completion",
        "tab completion of options",
        "completion of branch names",
        "the completion script",
        "__gitcomp",
        "completion of subcommands",
    ],
    "config": [
        "the config file",
        "git config",
        "configuration variables",
        "core settings",
        "config parsing",
        "include directives in config",
        "the config API",
    ],
}
VERBS = ["fix", "teach", "update", "clean up", "rework", "simplify", "extend", "document"]
REASONS = [
    "so that users stop tripping over it",
    "because the old behaviour was confusing",
    "to prepare for the next series",
    "as reported on the mailing list",
    "which was broken since the last release",
    "to match what other commands do",
]
BOT_PREFIX = "mirror-bot sync:"


def _sentence(rng: random.Random, topic: str) -> str:
    a, b = rng.sample(TOPICS[topic], 2)
    return (
        f"{rng.choice(VERBS).capitalize()} {a} and {b} {rng.choice(REASONS)}. "
        f"This touches {rng.choice(TOPICS[topic])} only."
    )


def make_user(seed: int, *, per_topic: int = 6, bots_per_topic: int = 12) -> dict:
    """A synthetic user: ``history`` (GIT_area profile items) and held-out ``queries``."""
    rng = random.Random(seed)
    topics = list(TOPICS)
    history, queries = [], []
    for t_i, topic in enumerate(topics):
        for j in range(per_topic):
            history.append(
                {
                    "id": f"u{seed}-{topic}-{j}",
                    "text": _sentence(rng, topic),
                    "tag": topic,
                    "date": f"2020-01-{1 + (j % 27):02d}T00:00:00+00:00",
                }
            )
        wrong = topics[(t_i + 1 + seed) % len(topics)]
        if wrong == topic:
            wrong = topics[(t_i + 2) % len(topics)]
        for j in range(bots_per_topic):
            history.append(
                {
                    "id": f"bot{seed}-{topic}-{j}",
                    "text": f"{BOT_PREFIX} {_sentence(rng, topic)}",
                    "tag": wrong,
                    "date": f"2020-02-{1 + (j % 27):02d}T00:00:00+00:00",
                }
            )
        for j in range(3):
            queries.append({"query": _sentence(rng, topic), "gold": topic})
    rng.shuffle(history)
    return {"history": history, "queries": queries}


def is_helpful(record_id: str) -> bool:
    """The user's own records help; the bot's do not."""
    return not record_id.startswith("bot")
