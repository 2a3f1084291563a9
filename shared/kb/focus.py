"""What a message asks the knowledge base about, without the framing around it.

A customer wraps the thing they ask about in words the documents never hold: a content
request names what to write and for whom ("Write a short email to my store managers
explaining how shift swaps work": the documents know "shift swaps", not "email" or
"managers"), and a problem report says when it started ("Since yesterday ...", "... this
week"). Scored as written, those words count as uncovered terms and pull a question the
documents answer down to PARTIAL or MISSING. The researcher searches and grades the focus:
the message with that framing taken out (never all of it: a message that is nothing but
framing stays as it is).
"""

from __future__ import annotations

import re

from shared.kb.levels import question_parts

_WEEKDAY = r"(?:mon|tues|wednes|thurs|fri|satur|sun)day"
_PERIOD = r"(?:morning|afternoon|evening|night|week|weekend|month|year|quarter|shift)"
_COUNT = r"(?:a\s+few|a\s+couple\s+of|several|two|three|four|five|\d+)"
_UNIT = r"(?:minutes|hours|days|weeks|months)"

# When a problem started or how long it has lasted: the report's time frame, not its topic.
_TIME_FRAME = re.compile(
    r"\b(?:"
    rf"(?:since|as\s+of)\s+(?:yesterday|today|last\s+{_PERIOD}|last\s+{_WEEKDAY}|{_WEEKDAY}"
    rf"|this\s+{_PERIOD}|\d{{1,2}}(?::\d\d)?\s*(?:am|pm)?)"
    rf"|(?:for\s+)?(?:the\s+)?(?:past|last)\s+{_COUNT}\s+{_UNIT}"
    rf"|{_COUNT}\s+{_UNIT}\s+ago"
    rf"|(?:this|last|past)\s+{_PERIOD}"
    r"|today|yesterday|tonight|lately|recently|suddenly|anymore|any\s+more|no\s+longer"
    r"|right\s+now"
    r"|at\s+the\s+moment|all\s+of\s+a\s+sudden"
    r")\b",
    re.IGNORECASE,
)

# "Can you write me a short email", "Please draft a one-page summary", "Write an FAQ": the
# ask and the deliverable of a content request, at the start of the message.
_DELIVERABLE = (
    r"(?:e-?mails?|summary|summaries|messages?|notes?|overview|one[- ]pager|posts?|paragraph"
    r"|pitch|description|explanation|memo|announcement|faq|blurb|slides?|brochure|proposal"
    r"|write[- ]up|text|letter|update|reply|intro(?:duction)?|document|guide|checklist)"
)
_CONTENT_ASK = re.compile(
    r"^\s*(?:(?:hi|hello|hey)\b[,!.]?\s*)?"
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?|please\s+"
    r"|i\s+(?:need|want|would\s+like)\s+(?:you\s+to\s+)?)?"
    r"(?:write|draft|create|prepare|compose|put\s+together|produce|make|give\s+me|send\s+me)"
    r"(?:\s+(?:me|us))?\s+(?:(?:a|an|the|some)\s+)?"
    r"(?:(?:short|brief|quick|simple|friendly|formal|concise|internal|polished"
    rf"|one[- ]page|two[- ]page)\s+)*{_DELIVERABLE}\b",
    re.IGNORECASE,
)
# Who the content is for: "to my store managers", "for our owner" (a possessive only, so
# "for the Plus plan" stays), and "that I can send to my manager".
_AUDIENCE = re.compile(
    r"\s+(?:to|for)\s+(?:my|our|all(?:\s+(?:of\s+)?(?:my|our|the))?)\s+(?:[\w-]+\s+){0,2}?[\w-]+"
    r"(?=\s*(?:explaining|describing|covering|outlining|summari[sz]ing|about|on|that|which"
    r"|so|,|\.|\?|!|$))",
    re.IGNORECASE,
)
_SEND_CLAUSE = re.compile(
    r"\s*,?\s*(?:that|which|so)\s+(?:i|we)\s+can\s+(?:send|forward|share|show|give|present)\b"
    r"[^.?!,]*",
    re.IGNORECASE,
)
_TOPIC_LEAD = re.compile(
    r"^\s*(?:explaining|describing|covering|outlining|summari[sz]ing|to\s+explain|about|on|of)\b",
    re.IGNORECASE,
)
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(r"\s+(?=[.?!,;])")


def _content_topic(message: str) -> str:
    """A content request's topic: the message without its ask, deliverable and audience."""
    ask = _CONTENT_ASK.match(message)
    if ask is None:
        return message
    rest = _SEND_CLAUSE.sub("", message[ask.end() :])
    rest = _AUDIENCE.sub("", rest)
    return _TOPIC_LEAD.sub("", rest)


def question_focus(message: str) -> str:
    """The message without a content request's framing or a problem's time frame."""
    focus = _TIME_FRAME.sub(" ", _content_topic(message))
    focus = _SPACE_BEFORE_MARK.sub("", _SPACES.sub(" ", focus)).strip(" ,")
    return focus if any(ch.isalnum() for ch in focus) else message


def retrieval_query(message: str) -> str:
    """What the researcher reranks first for a message: the first part of its focus. The
    simulated providers draw a turn's retrieval time by it, and so does the bare chord that
    ``chordline bench --baseline`` runs beside chordline, so both wait the same."""
    return question_parts(question_focus(message))[0]
