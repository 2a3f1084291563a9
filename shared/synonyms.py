"""Words a customer and a product's documents use for the same thing.

A lexical reranker only sees that "staff" and "employees", or "try" and "trial", are
different words; a customer who asks about one gets the documents that say the other graded
as not covering the question. These are the interchangeable words of everyday product
language (pricing, accounts, scheduling, devices, support), one group per line: each word of
a line counts as present in a passage that holds another word of that line. A word on two
lines ("vehicle") meets the words of both; the words of the two lines do not meet each other
("car" and "truck" stay apart). The words are matched by their Snowball stems, as the
reranker matches all words, so "reserved" meets "booking".
"""

from __future__ import annotations

import functools
from collections import defaultdict

from shared.text import stem

_GROUPS_TEXT = """
employee staff worker personnel colleague people person
receive get
appear show
cost price fee
pay billed
invoice bill
buy purchase
begin start
fix solve resolve repair
problem issue error fault trouble
delete remove erase
quick fast rapid quickly
phone mobile smartphone cellphone
phone call
app application
email mail
login logon
book reserve booking reservation
try trial
limit maximum cap max
allow permit
download export
sync synchronise synchronize synchronisation synchronization
customer client
company organisation organization business firm
boss manager supervisor
change edit modify alter
disappear vanish
cheap affordable inexpensive
discount rebate reduction
car automobile vehicle
truck lorry vehicle
van vehicle
annual yearly
upfront advance ahead beforehand prepay
help assist assistance
contact reach
spot space
document file doc
notification alert notice
schedule timetable rota roster
holiday vacation
guest visitor
refund reimburse reimbursement
cancel terminate
integrate connect
install configure setup
enable activate
disable deactivate
plan tier edition
user seat
"""


@functools.cache
def _equivalents() -> dict[str, frozenset[str]]:
    meets: defaultdict[str, set[str]] = defaultdict(set)
    for line in _GROUPS_TEXT.strip().splitlines():
        stems = {stem(word) for word in line.split()}
        for s in stems:
            meets[s] |= stems
    return {s: frozenset(group) for s, group in meets.items()}


def equivalent_stems(term: str) -> frozenset[str]:
    """The stems that count as ``term`` (a stem), itself included."""
    return _equivalents().get(term, frozenset((term,)))
