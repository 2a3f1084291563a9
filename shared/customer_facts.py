"""Facts about the customer, kept in the conversation's memory so nobody asks twice.

The agent stage reads them from each message with patterns (offline, no model call), or,
when the chat provider is OpenAI, with one structured-output call that falls back to the
patterns when it fails (``FactExtractor`` in ``shared/providers``), and merges them into
the memory's ``facts`` (``CustomerFacts``), the conversation's qualification record: the
company, how many sites and how many people, the tool in use today, what they need, the
budget, the timeline and who decides. A later message that states a fact again replaces
it (who decides and what they need accumulate). The discovery agent asks only for what is
not known yet.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from shared.schemas import ConversationMemory, CustomerFacts

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
# An amount of money: with a currency ("$20k", "800 euros"), or a bare number where the words
# around it say it is money ("our budget is 5000").
_MONEY = (
    r"(?:[$€£]\s?\d[\d,.]*\s?(?:k|m)?|\d[\d,.]*\s?(?:k|m)?\s?"
    r"(?:usd|eur|gbp|dollars|euros|pounds)\b)"
)
_PER = r"(?:\s?(?:a|per|/)\s?(?:year|month|user|seat|person))?"
_ABOUT = r"(?:(?:around|about|roughly|approximately|up to|under|at most|maybe) )?"
BUDGET = re.compile(
    r"\b(?:budget (?:is |of |was |would be |will be )?"
    rf"({_ABOUT}(?:{_MONEY}|\d[\d,.]*\s?(?:k|m)?\b){_PER})"
    r"|(?:spend|afford|pay) "
    rf"({_ABOUT}{_MONEY}{_PER}))",
    re.IGNORECASE,
)
TIMELINE = re.compile(
    r"\b((?:by|before|within|in) (?:the )?(?:end of )?(?:q[1-4]|next (?:week|month|quarter|"
    r"year)|\d+ (?:weeks?|months?)|january|february|march|april|may|june|july|august|"
    r"september|october|november|december|this (?:month|quarter|year)))\b",
    re.IGNORECASE,
)


COMPANY = re.compile(
    r"\b(?i:I'm|I am|we're|we are|this is \w+)\s+(?:[a-z]+\s+){0,3}(?i:at|from|with)\s+"
    r"([A-Z][\w&.-]*(?:\s+[A-Z][\w&.-]*){0,2})"
    r"|\b(?i:at)\s+([A-Z][\w&.-]*(?:\s+[A-Z][\w&.-]*){0,2}),?\s+(?i:we)\b"
    # "We are Acme Builders, ...": a name right after "we are", ending the clause (not "we
    # are GDPR compliant")
    r"|\b(?i:we're|we are)\s+([A-Z][\w&.-]*(?:\s+[A-Z][\w&.-]*){0,2})"
    r"(?=\s*(?:[,.;:!?]|$)|\s+(?i:and|with|from|in)\b)"
)
DECIDERS = re.compile(
    r"\b(?:our|my|the)\s+(CFO|CTO|CEO|COO|CIO|CISO|IT team|finance team|procurement|board|"
    r"(?:IT |operations |finance )?manager|(?:IT |operations |finance )?director|"
    r"head of [a-z]+)\b",
    re.IGNORECASE,
)
NEEDS = re.compile(
    r"\b(?:we need|we want|we must have|we are looking for|we're looking for|looking for)\s+"
    # "we want it live by Q3", "we want to decide by March": a timeline, not a need
    r"(?!(?:it|them|this|that|you|to know|to decide|to make a decision|to go live|to start|"
    r"to sign)\b)"
    r"((?:[\w'-]+\s*){1,6}?)(?=[,.;!?]|\s+(?:and|but|so|because|that)\b|$)",
    re.IGNORECASE,
)


def _count(raw: str) -> int | None:
    word = raw.lower()
    if word in NUMBER_WORDS:
        return NUMBER_WORDS[word]
    digits = word.replace(",", "")
    return int(digits) if digits.isdigit() else None


def facts_in(message: str) -> CustomerFacts:
    """The facts a message states about the customer."""
    facts = CustomerFacts()
    if (sites := SITES.search(message)) and (count := _count(sites.group(1))) is not None:
        facts["sites"] = count
    if (people := PEOPLE.search(message)) and (count := _count(people.group(1))) is not None:
        facts["people"] = count
    if tool := CURRENT_TOOL.search(message):
        facts["current_tool"] = tool.group(1).strip(" .,;:!?")
    if budget := BUDGET.search(message):
        facts["budget"] = (budget.group(1) or budget.group(2)).strip(" .,")
    if timeline := TIMELINE.search(message):
        facts["timeline"] = timeline.group(1).strip()
    if company := COMPANY.search(message):
        facts["company"] = next(name for name in company.groups() if name).strip(" .,")
    if deciders := DECIDERS.findall(message):
        facts["decision_makers"] = list(dict.fromkeys(d.strip() for d in deciders))
    if needs := NEEDS.findall(message):
        facts["needs"] = list(dict.fromkeys(n.strip() for n in needs))
    return facts


def remembered_facts(
    memory: ConversationMemory, message: str, stated: CustomerFacts | None = None
) -> CustomerFacts:
    """The facts memory holds, with those of this message merged in (who decides and what
    they need accumulate; any other fact stated again replaces the one known). ``stated``:
    the message's facts as a model extracted them; read with patterns when not given."""
    return merged_facts(memory.facts, facts_in(message) if stated is None else stated)


def merged_facts(known: CustomerFacts, stated: CustomerFacts) -> CustomerFacts:
    """``known`` updated with ``stated``, by the rules of ``remembered_facts``."""
    new = stated.copy()
    if "decision_makers" in new and "decision_makers" in known:
        new["decision_makers"] = _accumulated(known["decision_makers"], new["decision_makers"])
    if "needs" in new and "needs" in known:
        new["needs"] = _accumulated(known["needs"], new["needs"])
    merged = known.copy()
    merged.update(new)
    return merged


def _accumulated(known: list[str], new: list[str]) -> list[str]:
    return list(dict.fromkeys([*known, *new]))


# What discovery asks for, in order, and how.
QUESTIONS = (
    (("sites", "people"), "how many sites and people would use it"),
    (("sites",), "how many sites would use it"),
    (("people",), "how many people would use it"),
    (("current_tool",), "what are you using today"),
    (("timeline",), "when would you like to have it running"),
    (("budget",), "what budget do you have in mind"),
    (("decision_makers",), "who else will weigh in on the decision"),
)


TRIAL_OFFER = "Shall I set up a trial with that in mind?"
# "What else do you need to know?": the customer asks to be asked, questions let pass included.
INVITATIONS = ("what else", "anything else", "what do you need", "need to know", "what information")
INVITES_QUESTIONS = re.compile(rf"\b(?:{'|'.join(map(re.escape, INVITATIONS))})\b", re.IGNORECASE)


TRIAL = "trial"  # what the memory's ``asked`` records for the offer of a trial


def questions_in(reply: str) -> list[str]:
    """What a reply asked the customer for: the fact keys of the discovery questions it
    puts, and ``trial`` when it offers one (the memory keeps them as ``asked``)."""
    text = reply.lower()
    keys = [key for keys, question in QUESTIONS if question in text for key in keys]
    if TRIAL_OFFER.lower() in text:
        keys.append(TRIAL)
    return list(dict.fromkeys(keys))


def discovery_question(facts: CustomerFacts, asked: Collection[str] = ()) -> str:
    """The next one or two things to ask: none the customer already said, and none in
    ``asked`` (what the conversation asked for before: a question the customer let pass is
    not put again). With nothing left to ask, the offer of a trial, once; then nothing."""
    done = set(asked)
    wanted: list[str] = []
    for keys, question in QUESTIONS:
        if all(k not in facts and k not in done for k in keys):
            wanted.append(question)
            done.update(keys)
        if len(wanted) == 2:
            break
    if wanted:
        return f"To point you at the right setup: {' and '.join(wanted)}?"
    return "" if TRIAL in done else TRIAL_OFFER


def acknowledgement(stated: CustomerFacts) -> str:
    """What the customer just told us, said back in one sentence (empty when nothing), so
    that they see it was heard: "Thanks, noted: Acme Builders, 40 people across 3 sites,
    paper timesheets today."."""
    parts: list[str] = []
    if company := stated.get("company"):
        parts.append(company)
    people, sites = stated.get("people"), stated.get("sites")
    headcount = None if people is None else f"{people} {'person' if people == 1 else 'people'}"
    places = None if sites is None else f"{sites} site{'' if sites == 1 else 's'}"
    if counts := [c for c in (headcount, places) if c]:
        parts.append(" across ".join(counts))  # "40 people across 3 sites"
    if tool := stated.get("current_tool"):
        parts.append(f"{tool} today")
    said_counts = {str(n) for n in (people, sites) if n is not None}
    for need in stated.get("needs", []):
        if not said_counts & set(re.findall(r"\d+", need)):  # "up to 40 users": said above
            parts.append(f"looking for {need}")
    if budget := stated.get("budget"):
        parts.append(f"a budget of {budget}")
    if timeline := stated.get("timeline"):
        parts.append(timeline)
    if deciders := stated.get("decision_makers"):
        parts.append(f"your {' and your '.join(deciders)} in the decision")
    return f"Thanks, noted: {', '.join(parts)}." if parts else ""
