"""How provider limits are written (``CHORDLINE_PROVIDER_LIMITS``): entries of
``provider/model=Nrpm[:Ntpm]`` separated by commas. The settings check them at startup;
``providers/limits.py`` enforces them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENTRY = re.compile(r"^(?P<key>[a-z0-9_.-]+/[A-Za-z0-9_.:@-]+?)=(?P<limits>[0-9a-z:]+)$")
_LIMIT = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>rpm|tpm)$")


@dataclass(frozen=True)
class ModelLimit:
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute


def parse_limits(text: str) -> dict[str, ModelLimit]:
    """``provider/model=Nrpm[:Ntpm]`` entries separated by commas; ValueError names the one
    at fault."""
    limits: dict[str, ModelLimit] = {}
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        entry = _ENTRY.match(raw)
        if entry is None:
            raise ValueError(
                f"{raw!r} is not provider/model=LIMIT[:LIMIT], e.g. "
                "openai/gpt-4o-mini=500rpm:200000tpm"
            )
        rpm = tpm = None
        for part in entry["limits"].split(":"):
            limit = _LIMIT.match(part)
            if limit is None:
                raise ValueError(
                    f"{part!r} in {raw!r} is not a limit; write a whole number followed by rpm "
                    "(requests per minute) or tpm (tokens per minute)"
                )
            if limit["unit"] == "rpm":
                rpm = int(limit["n"])
            else:
                tpm = int(limit["n"])
        limits[entry["key"]] = ModelLimit(rpm=rpm, tpm=tpm)
    return limits
