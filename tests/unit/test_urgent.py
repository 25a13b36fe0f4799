"""Urgent phrases: every default phrase is found whatever its case, accents or
punctuation; near misses are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.core.urgent import DEFAULT_PHRASES, UrgentPhrases, normalize

pytestmark = pytest.mark.clock  # dates and hours: ./dev test --clocks

PHRASES = UrgentPhrases.from_file(None)
ALL = [(language, phrase) for language, group in DEFAULT_PHRASES.items() for phrase in group]


@pytest.mark.parametrize("language, phrase", ALL)
def test_every_phrase_is_found_in_a_sentence_shouted_or_typed_fast(language: str, phrase: str):
    for text in (
        f"Hello, {phrase}.",
        f"{phrase.upper()}!!!",
        f"since this morning:{phrase}",
        phrase.replace("a", "á", 1).replace("'", "\u2019"),
    ):
        assert PHRASES.match(text) == normalize(phrase).strip(), text


@pytest.mark.parametrize(
    "text",
    [
        "I have a chesty cough",
        "painting my chest of drawers",
        "strokes of luck",
        "my pain in the chest area",  # words apart: not the phrase (lists carry variants)
        "overdue bill",
        "I cannot breath",  # a misspelling: not the phrase (see the docs on adding variants)
        "",
    ],
)
def test_near_misses_are_not_urgent(text: str):
    assert PHRASES.match(text) is None


def test_a_clinic_sets_its_own_lists(tmp_path: Path):
    path = tmp_path / "phrases.json"
    path.write_text(json.dumps({"de": ["Brustschmerzen"], "en": ["bleeding won't stop"]}))
    phrases = UrgentPhrases.from_file(str(path))
    assert phrases.match("starke BRUSTSCHMERZEN seit einer Stunde") == "brustschmerzen"
    assert phrases.match("the bleeding wont stop") == "bleeding wont stop"
    assert phrases.match("chest pain") is None  # the defaults are replaced, not added to
    path.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ValueError):
        UrgentPhrases.from_file(str(path))
