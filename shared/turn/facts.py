"""Facts about the customer, kept in the conversation's memory so nobody asks twice.

The agent stage reads them from each message with patterns (offline, no model call) and
merges them into ``memory["facts"]``: how many sites and how many people, the tool in use
today, the budget and the timeline. A later message that states a fact again replaces it.
The discovery agent asks only for what is not known yet.
"""

from __future__ import annotations

import re
from typing import Any

NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "hundred": 100,
    "a dozen": 12,
}
_NUMBER = r"(\d[\d,]*|" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r")"
SITES = re.compile(
    rf"\b{_NUMBER}\s+(?:\w+\s+)?(sites?|warehouses?|locations?|offices?|buildings?|stores?|"
    r"branches|branch|clinics?|plants?|depots?|campuses)\b",
    re.IGNORECASE,
)
PEOPLE = re.compile(
    rf"\b{_NUMBER}\s+(?:\w+\s+)?(people|employees|users|staff|seats|agents|members|"
    r"colleagues|workers|pickers|drivers|technicians)\b",
    re.IGNORECASE,
)
CURRENT_TOOL = re.compile(
    r"\b(?:(?:we|and)(?:'re| are)? (?:currently |still )?(?:use|using|on|run(?:ning)? on)|"
    r"(?:currently|today) (?:we )?(?:use|using|on)|replace our|replacing our|switch(?:ing)? "
    r"from|move away from|moving away from|migrat(?:e|ing) from)\s+"
    r"((?:[A-Za-z0-9][\w.&/-]*)(?:\s+(?!(?:and|but|to|for|with|today|now|currently|at|in|"
    r"which|that|so|because)\b)[A-Za-z0-9][\w.&/-]*){0,2})",
    re.IGNORECASE,
)
BUDGET = re.compile(
    r"\b(?:budget (?:is |of |around |about )?|up to |spend )"
    r"((?:[$€£]\s?)?\d[\d,.]*\s?(?:k|m|usd|eur|gbp|dollars|euros)?(?:\s?(?:a|per) "
    r"(?:year|month))?)",
    re.IGNORECASE,
)
TIMELINE = re.compile(
    r"\b((?:by|before|within|in) (?:the )?(?:end of )?(?:q[1-4]|next (?:week|month|quarter|"
    r"year)|\d+ (?:weeks?|months?)|january|february|march|april|may|june|july|august|"
    r"september|october|november|december|this (?:month|quarter|year)))\b",
    re.IGNORECASE,
)


def _count(raw: str) -> int | None:
    word = raw.lower()
    if word in NUMBER_WORDS:
        return NUMBER_WORDS[word]
    digits = word.replace(",", "")
    return int(digits) if digits.isdigit() else None


def facts_in(message: str) -> dict[str, Any]:
    """The facts a message states about the customer."""
    facts: dict[str, Any] = {}
    if (sites := SITES.search(message)) and (count := _count(sites.group(1))) is not None:
        facts["sites"] = count
    if (people := PEOPLE.search(message)) and (count := _count(people.group(1))) is not None:
        facts["people"] = count
    if tool := CURRENT_TOOL.search(message):
        facts["current_tool"] = tool.group(1).strip(" .,;:!?")
    if budget := BUDGET.search(message):
        facts["budget"] = budget.group(1).strip()
    if timeline := TIMELINE.search(message):
        facts["timeline"] = timeline.group(1).strip()
    return facts


def remembered_facts(memory: dict[str, Any], message: str) -> dict[str, Any]:
    """The facts memory holds, with those of this message merged in."""
    earlier = memory.get("facts")
    known = dict(earlier) if isinstance(earlier, dict) else {}
    return {**known, **facts_in(message)}


# What discovery asks for, in order, and how.
QUESTIONS = (
    (("sites", "people"), "how many sites and people would use it"),
    (("sites",), "how many sites would use it"),
    (("people",), "how many people would use it"),
    (("current_tool",), "what are you using today"),
    (("timeline",), "when would you like to have it running"),
    (("budget",), "what budget do you have in mind"),
)


def discovery_question(facts: dict[str, Any]) -> str:
    """The next one or two things to ask, without any the customer already said."""
    wanted: list[str] = []
    asked: set[str] = set()
    for keys, question in QUESTIONS:
        if all(k not in facts and k not in asked for k in keys):
            wanted.append(question)
            asked.update(keys)
        if len(wanted) == 2:
            break
    if not wanted:
        return "Shall I set up a trial with that in mind?"
    return f"To point you at the right setup: {' and '.join(wanted)}?"
