"""Acronyms a tenant's documents define, matched both ways.

A document that writes "single sign-on (SSO)" or "SSO (single sign-on)" defines SSO for the
whole knowledge base. Every chunk that uses one spelling and not the other gets the other as
an alias (``kb_chunks.aliases``), which the full-text vector and the reranker read: a
question about "SSO" finds the page that only says "single sign-on", and a question about
"single sign-on" the page that only says "SSO". All of it happens at ingest, after the
tenant's knowledge base changed (``refresh_aliases``); a question costs nothing more.

A definition counts only when the initials of the long form spell the acronym (small words
such as "of" and "and" may be skipped), so "Google Workspace (GW)" is one and "our plans
(2024)" is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

MINOR_WORDS = frozenset({"of", "and", "for", "the", "a", "an", "to", "in", "&"})
_ACRONYM = r"[A-Z][A-Za-z0-9&]{0,8}[A-Z0-9]"  # 2 to 10 characters, capital first and last
_IN_PARENS = re.compile(rf"\(({_ACRONYM})\)")
_BEFORE_PARENS = re.compile(rf"\b({_ACRONYM})\s*\(([^()]{{3,80}})\)")
_TOKEN = re.compile(r"[A-Za-z0-9&]+")


@dataclass(frozen=True)
class Definition:
    acronym: str  # as written: "SSO"
    long_form: str  # lower case, words separated by single spaces: "single sign on"


def _letters(acronym: str) -> str:
    return "".join(ch for ch in acronym.lower() if ch.isalpha())


def _spelled_backwards(tokens: Sequence[str], letters: str) -> list[str] | None:
    """The shortest run of tokens ending at the last one whose initials spell ``letters``
    (small words skipped inside it), or None."""
    wanted = list(letters)
    used: list[str] = []
    for token in reversed(tokens):
        if not wanted:
            break
        if token[0].lower() == wanted[-1]:
            wanted.pop()
            used.append(token)
        elif token.lower() in MINOR_WORDS and used:
            used.append(token)
        else:
            return None
    return list(reversed(used)) if not wanted else None


def _spelled_forwards(tokens: Sequence[str], letters: str) -> bool:
    initials = [t[0].lower() for t in tokens if t.lower() not in MINOR_WORDS]
    return "".join(initials) == letters


def normalised(text_: str) -> str:
    """Lower case, words separated by single spaces: "Single Sign-On" is "single sign on"."""
    return " ".join(token.lower() for token in _TOKEN.findall(text_))


def definitions_in(text_: str) -> list[Definition]:
    """The acronyms a text defines, in either order."""
    found: list[Definition] = []
    for match in _IN_PARENS.finditer(text_):
        acronym, letters = match.group(1), _letters(match.group(1))
        if len(letters) < 2:
            continue
        before = _TOKEN.findall(text_[max(0, match.start() - 120) : match.start()])
        spelled = _spelled_backwards(before, letters)
        if spelled:
            found.append(Definition(acronym, normalised(" ".join(spelled))))
    for match in _BEFORE_PARENS.finditer(text_):
        acronym, letters = match.group(1), _letters(match.group(1))
        tokens = _TOKEN.findall(match.group(2))
        if len(letters) >= 2 and tokens and _spelled_forwards(tokens, letters):
            found.append(Definition(acronym, normalised(match.group(2))))
    return found


def tenant_definitions(texts: Iterable[str]) -> list[Definition]:
    """Each acronym once (its first definition), in order of appearance."""
    known: dict[str, Definition] = {}
    for chunk_text in texts:
        for definition in definitions_in(chunk_text):
            known.setdefault(definition.acronym, definition)
    return list(known.values())


def aliases_for(chunk_text: str, definitions: Sequence[Definition]) -> str:
    """The spellings a chunk lacks: the acronym where it has only the long form, the long
    form where it has only the acronym. Joined by "; " (empty when none)."""
    padded = f" {normalised(chunk_text)} "
    aliases: list[str] = []
    for d in definitions:
        has_long = f" {d.long_form} " in padded
        has_acronym = re.search(
            rf"(?<![A-Za-z0-9]){re.escape(d.acronym)}(?![A-Za-z0-9])", chunk_text
        )
        if has_long and not has_acronym:
            aliases.append(d.acronym)
        elif has_acronym and not has_long:
            aliases.append(d.long_form)
    return "; ".join(aliases)


def refresh_aliases(session: Session, tenant_id: str) -> int:
    """Recompute the aliases of the tenant's chunks from the definitions in all of them;
    writes only the chunks whose aliases changed, and returns how many did."""
    rows = session.execute(
        text("SELECT id, heading, text, aliases FROM kb_chunks WHERE tenant_id = :t ORDER BY id"),
        {"t": tenant_id},
    ).all()
    definitions = tenant_definitions(f"{r.heading}\n{r.text}" for r in rows)
    changed = []
    for row in rows:
        aliases = aliases_for(f"{row.heading}\n{row.text}", definitions)
        if aliases != row.aliases:
            changed.append({"id": row.id, "aliases": aliases})
    if changed:
        session.execute(text("UPDATE kb_chunks SET aliases = :aliases WHERE id = :id"), changed)
    return len(changed)
