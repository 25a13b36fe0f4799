"""Urgent messages: phrases that mean a patient may need help now.

A patient message is urgent when it contains one of the phrases as whole words,
whatever its case, accents or punctuation ("CHEST PAIN!", "dolor de pecho", "je
n'arrive pas à respirer"). Matching errs on the side of paging: a false positive
costs a page, a false negative may cost a life. The lists are the clinic's to set
(``HUB_URGENT_PHRASES_FILE``); these defaults are a starting point, not a triage
protocol.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "chest pain",
        "can't breathe",
        "cannot breathe",
        "trouble breathing",
        "short of breath",
        "suicidal",
        "kill myself",
        "want to die",
        "overdose",
        "stroke",
        "face drooping",
        "seizure",
        "seizures",
        "unconscious",
        "severe bleeding",
        "bleeding heavily",
        "anaphylaxis",
        "throat swelling",
        "heart attack",
    ),
    "es": (
        "dolor de pecho",
        "no puedo respirar",
        "quiero morir",
        "suicidarme",
        "sangrado abundante",
        "convulsion",
        "infarto",
    ),
    "fr": (
        "douleur thoracique",
        "douleur a la poitrine",
        "je n'arrive pas a respirer",
        "je veux mourir",
        "suicidaire",
        "saignement abondant",
        "convulsion",
        "crise cardiaque",
    ),
}


def normalize(text: str) -> str:
    """Case-folded, accents removed, apostrophes dropped, every other run of
    non-letters one space, padded with spaces (so ``" chest pain "`` is a whole-word
    match)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = re.sub(r"['\u2019\u02bc]", "", plain)
    return " " + re.sub(r"[^0-9a-z]+", " ", plain).strip() + " "


class UrgentPhrases:
    def __init__(self, phrases: Mapping[str, Iterable[str]]) -> None:
        self._phrases = sorted(
            {normalize(p) for group in phrases.values() for p in group if p.strip()}
        )

    @classmethod
    def from_file(cls, path: str | None) -> UrgentPhrases:
        """The defaults, or a JSON file of ``{"en": ["chest pain", ...], ...}``."""
        if path is None:
            return cls(DEFAULT_PHRASES)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in data.values()
        ):
            raise ValueError('expected {"language": ["phrase", ...], ...}')
        return cls(data)

    def match(self, text: str) -> str | None:
        """The first phrase the text contains (normalized), or None."""
        plain = normalize(text)
        for phrase in self._phrases:
            if phrase in plain:
                return phrase.strip()
        return None
