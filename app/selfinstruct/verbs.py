"""Root verb and direct object of an instruction, without a trained parser.

The report prefers spaCy's dependency parser when a model is installed (see
`app/services/report.py`); this heuristic is the fallback, and the report names which one ran.
It reads instructions as imperatives, which most are: the first word is the verb, the direct
object is the last word of the noun phrase after it ("Write a short poem about cats" -> write,
poem). Questions ("What is ...?") and clauses it cannot read give no pair, as in the paper's
analysis, which kept only instructions whose parse had a verb root and a direct object.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|[.,;:!?()]")
_NOT_VERBS = frozenset(
    "what how why which who whom whose when where is are was were do does did can could "
    "would should will shall may might if in on for to of the a an this that these those "
    "there it i you we they he she my your our".split()
)
_SKIP_FIRST = frozenset({"please", "now", "then", "also", "briefly", "quickly", "carefully"})
# Words that end a noun phrase: its head is the word before them.
_PHRASE_END = frozenset(
    "of about on for to in into with from by as at that which who whose where when while "
    "and or but than using based given so if without between among through under over".split()
)
_NOT_HEADS = frozenset(
    "a an the me us him her them it this that these those my your our their its some any each "
    "every all both few several many more most one two three four five six seven eight nine "
    "ten following given short long brief new own".split()
)


def verb_objects(texts: Sequence[str]) -> list[tuple[str | None, str | None]]:
    return [verb_object(t) for t in texts]


def verb_object(text: str) -> tuple[str | None, str | None]:
    tokens = [t.lower() for t in _WORD.findall(_drop_leading_clause(text))]
    while tokens and tokens[0] in _SKIP_FIRST:
        tokens = tokens[1:]
    if not tokens or not tokens[0].isalpha() or tokens[0] in _NOT_VERBS:
        return None, None
    verb, phrase = tokens[0], []
    for token in tokens[1:]:
        if token in _PHRASE_END or not token[0].isalpha():
            break
        phrase.append(token)
    heads = [t for t in phrase if t not in _NOT_HEADS]
    return (verb, singular(heads[-1])) if heads else (verb, None)


def _drop_leading_clause(text: str) -> str:
    """ "Given a list of numbers, sort them." -> "sort them." """
    stripped = text.strip()
    if re.match(r"(?i)(given|using|based on|for|in|with|if)\b", stripped) and "," in stripped:
        return stripped.split(",", 1)[1]
    return stripped


def singular(noun: str) -> str:
    """Plural to singular for regular English nouns, which is what instructions use."""
    if len(noun) > 4 and noun.endswith("ies"):
        return noun[:-3] + "y"
    if len(noun) > 4 and noun.endswith(("sses", "ches", "shes", "xes")):
        return noun[:-2]
    if len(noun) > 3 and noun.endswith("s") and not noun.endswith(("ss", "us", "is")):
        return noun[:-1]
    return noun
