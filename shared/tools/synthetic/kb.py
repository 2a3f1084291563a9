"""Generated product documentation, for the knowledge-base benchmark.

Not random vectors: real English sentences built from templates over a vocabulary with
topical structure. Each of 24 topics (billing, webhooks, barcode scanning, ...) has its own
words; a sentence mixes the words of one topic (drawn with a Zipf-like skew, as real text
is) with a shared everyday vocabulary. Each tenant is a fictional product documenting a
handful of topics in Markdown documents with headings, so its chunks form topical clusters
that overlap with other tenants' clusters, as the knowledge bases of different customers do.
Each product also has its own named things (features, settings, integrations: invented
words, about one per eight chunks, mentioned with a Zipf skew), which give the corpus the
long tail of rare terms that real documentation has and keyword search depends on. A
section is about one such name and a few topic words, as sections of real documents are
about one thing, so a question has passages that answer it better than others.
Questions are generated from the same topics and names. Everything is seeded, so a run is
repeatable.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

TOPICS: dict[str, tuple[str, ...]] = {
    "billing": (
        "invoice", "subscription", "payment", "card", "refund", "proration", "receipt",
        "billing", "charge", "renewal", "currency", "tax", "credit", "coupon", "seat",
        "annual", "monthly", "plan", "upgrade", "downgrade", "balance", "ledger", "dunning",
    ),
    "authentication": (
        "password", "login", "session", "token", "saml", "sso", "okta", "factor", "mfa",
        "identity", "provider", "lockout", "credential", "expiry", "cookie", "sign-in",
        "passkey", "recovery", "directory", "scim", "provisioning", "role", "tenant",
    ),
    "api": (
        "endpoint", "request", "response", "json", "header", "pagination", "cursor", "key",
        "quota", "limit", "version", "deprecation", "sdk", "client", "status", "payload",
        "schema", "field", "filter", "sort", "idempotency", "retry", "timeout",
    ),
    "webhooks": (
        "webhook", "event", "delivery", "signature", "hmac", "secret", "subscriber",
        "callback", "url", "backoff", "replay", "attempt", "queue", "ordering", "duplicate",
        "acknowledge", "verify", "topic", "listener", "failure", "dead-letter", "batch",
    ),
    "reporting": (
        "report", "dashboard", "chart", "metric", "export", "schedule", "widget", "filter",
        "column", "pivot", "aggregate", "trend", "kpi", "snapshot", "csv", "spreadsheet",
        "drilldown", "period", "comparison", "forecast", "variance", "summary",
    ),
    "inventory": (
        "stock", "bin", "warehouse", "sku", "pallet", "location", "aisle", "reorder",
        "valuation", "count", "cycle", "adjustment", "transfer", "receiving", "putaway",
        "allocation", "backorder", "lot", "serial", "expiry", "shelf", "zone",
    ),
    "shipping": (
        "shipment", "carrier", "label", "tracking", "parcel", "freight", "manifest",
        "rate", "courier", "delivery", "customs", "dimension", "weight", "dispatch",
        "pickup", "route", "consignment", "incoterm", "proof", "returns", "fulfilment",
    ),
    "scheduling": (
        "calendar", "appointment", "booking", "slot", "availability", "timezone",
        "reminder", "recurring", "shift", "roster", "overtime", "holiday", "conflict",
        "resource", "capacity", "waitlist", "cancellation", "reschedule", "agenda",
    ),
    "notifications": (
        "notification", "email", "sms", "push", "alert", "digest", "template",
        "preference", "unsubscribe", "channel", "bounce", "sender", "throttle", "badge",
        "mention", "inbox", "escalation", "quiet", "frequency", "recipient",
    ),
    "import": (
        "import", "csv", "mapping", "column", "upload", "validation", "duplicate", "merge",
        "template", "row", "encoding", "delimiter", "migration", "legacy", "preview",
        "rollback", "batch", "record", "spreadsheet", "cleanup", "header",
    ),
    "permissions": (
        "permission", "role", "admin", "editor", "viewer", "access", "group", "policy",
        "scope", "owner", "invite", "audit", "restriction", "team", "workspace",
        "delegation", "approval", "inheritance", "override", "grant", "revoke",
    ),
    "mobile": (
        "mobile", "app", "android", "ios", "scanner", "offline", "sync", "camera",
        "barcode", "device", "tablet", "battery", "gesture", "handheld", "firmware",
        "bluetooth", "crash", "update", "storage", "signal", "screen",
    ),
    "integrations": (
        "integration", "connector", "shopify", "netsuite", "quickbooks", "salesforce",
        "hubspot", "zapier", "slack", "erp", "crm", "marketplace", "oauth", "mapping",
        "sync", "field", "trigger", "action", "workflow", "partner", "middleware",
    ),
    "security": (
        "encryption", "tls", "aes", "key", "vulnerability", "penetration", "firewall",
        "certificate", "rotation", "secret", "incident", "breach", "malware", "patch",
        "hardening", "vpn", "allowlist", "ip", "intrusion", "monitoring", "disclosure",
    ),
    "compliance": (
        "gdpr", "soc", "audit", "hipaa", "residency", "retention", "dpa", "processor",
        "controller", "consent", "deletion", "subprocessor", "iso", "certification",
        "evidence", "control", "policy", "regulation", "privacy", "assessment", "region",
    ),
    "performance": (
        "latency", "throughput", "cache", "index", "query", "load", "uptime", "sla",
        "scaling", "cluster", "replica", "failover", "capacity", "benchmark", "bottleneck",
        "timeout", "concurrency", "memory", "cpu", "region", "degradation",
    ),
    "onboarding": (
        "onboarding", "kickoff", "training", "workshop", "checklist", "milestone",
        "go-live", "specialist", "sandbox", "pilot", "rollout", "champion", "adoption",
        "handover", "success", "manager", "plan", "timeline", "configuration", "setup",
    ),
    "troubleshooting": (
        "error", "troubleshoot", "log", "diagnostic", "restart", "cache", "browser",
        "firewall", "proxy", "symptom", "workaround", "fix", "reproduce", "ticket",
        "escalate", "status", "outage", "incident", "support", "version", "clear",
    ),
    "search": (
        "search", "keyword", "facet", "relevance", "ranking", "synonym", "autocomplete",
        "typo", "index", "query", "filter", "result", "boost", "stemming", "phrase",
        "highlight", "suggestion", "catalog", "attribute", "sorting",
    ),
    "analytics": (
        "event", "funnel", "cohort", "retention", "session", "attribution", "segment",
        "conversion", "tracking", "pixel", "experiment", "variant", "dashboard", "metric",
        "churn", "engagement", "journey", "property", "identify", "pageview",
    ),
    "localization": (
        "language", "translation", "locale", "currency", "timezone", "format", "glossary",
        "right-to-left", "unicode", "plural", "string", "translator", "fallback",
        "region", "date", "number", "keyboard", "font", "dictionary", "market",
    ),
    "campaigns": (
        "campaign", "newsletter", "audience", "segment", "subject", "open", "click",
        "template", "sender", "bounce", "spam", "deliverability", "list", "contact",
        "automation", "drip", "landing", "form", "lead", "nurture", "unsubscribe",
    ),
    "backups": (
        "backup", "restore", "snapshot", "recovery", "point-in-time", "retention",
        "replication", "archive", "disaster", "rpo", "rto", "copy", "vault", "schedule",
        "integrity", "checksum", "export", "region", "versioning", "drill",
    ),
    "pricing": (
        "price", "plan", "tier", "discount", "trial", "quote", "contract", "seat",
        "usage", "overage", "enterprise", "starter", "growth", "addon", "volume",
        "commitment", "invoice", "nonprofit", "education", "budget", "term",
    ),
}  # fmt: skip

COMMON = (
    "team", "customer", "account", "user", "data", "setting", "page", "feature", "change",
    "time", "system", "process", "option", "list", "detail", "view", "order", "file",
    "number", "default", "rule", "message", "link", "name", "value", "item", "step",
    "new", "existing", "daily", "automatic", "manual", "separate", "specific", "shared",
    "main", "current", "previous", "available", "required", "optional", "custom",
)  # fmt: skip

VERBS = (
    "configure", "create", "update", "review", "enable", "disable", "check", "open",
    "select", "confirm", "assign", "remove", "connect", "send", "track", "approve",
    "export", "import", "schedule", "verify", "monitor", "change", "apply", "reset",
)  # fmt: skip

SENTENCES = (
    "To {verb} the {a} {b}, open the {c} page and {verb2} the {d}.",
    "Every {a} has its own {b}, and the {c} {d} is shown next to it.",
    "When a {a} fails, {product} retries the {b} and records the {c} in the {d} history.",
    "Administrators can {verb} the {a} for each {b} from the {c} settings.",
    "The {a} {b} is updated every few minutes, so the {c} always matches the {d}.",
    "If the {a} does not match the {b}, {verb} the {c} and try the {d} again.",
    "{product} keeps a {a} for every {b}, which makes it easy to {verb} the {c}.",
    "You can {verb} a {a} without changing the {b} or the {c} {d}.",
    "A {a} can belong to several {b} groups, and each {c} inherits its {d}.",
    "We recommend that you {verb} the {a} before you {verb2} the {b} {c}.",
    "The {a} limit depends on the {b} and on the {c} of your {d}.",
    "Use the {a} {b} to {verb} how the {c} behaves for a {d}.",
    "By default, the {a} is {common} and the {b} {c} is kept for the {d}.",
    "Each {a} is linked to a {b}, so the {c} can {verb} the {d} directly.",
    "Only an owner of the {a} may {verb} its {b}.",
    "The {a} report lists each {b} with its {c}.",
    "Changes to a {a} reach the {b} within a minute.",
    "A {a} without a {b} is skipped during the nightly {c} run.",
    "{product} shows a warning when the {a} exceeds the {b}.",
    "Set the {a} to zero to turn off the {b} for that {c}.",
    "Up to fifty {a} entries can share one {b}.",
    "Older {a} versions stay readable, but only the latest {b} can {verb} a {c}.",
    "Support can {verb} a {a} on request if the {b} is locked.",
    "The {a} field accepts letters, digits and dashes.",
    "Filtering by {a} narrows the {b} list to matching {c} entries.",
    "Deleting a {a} also removes its {b} after thirty days.",
    "Import a {a} file to {verb} many {b} entries at once.",
    "Rename the {a} freely; the {b} keeps its identifier.",
    "Two {a} entries with the same {b} are merged into one {c}.",
    "If you {verb} the {a}, notify the {b} owners first.",
)  # fmt: skip

QUESTIONS = (
    "How do I {verb} the {a} {b}?",
    "Why does the {a} not match the {b}?",
    "Can {product} {verb} a {a} for each {b}?",
    "What happens to the {a} when the {b} fails?",
    "Where can I {verb} the {a} and the {b} {c}?",
    "Is there a limit on the {a} per {b}?",
    "How does the {a} {b} work with the {c}?",
)  # fmt: skip

SYLLABLES = (
    "nor", "vik", "tal", "ra", "bel", "qu", "ori", "sen", "ka", "do", "mir", "lu", "fen",
    "gar", "zo", "pel", "tri", "mon", "sa", "vel", "dra", "kin", "os", "ur", "bra", "ti",
    "len", "cor", "ma", "ex",
)  # fmt: skip
CHUNKS_PER_NAME = 8


@dataclass(frozen=True)
class SyntheticTenant:
    tenant_id: str
    size_class: str
    chunks: int
    product: str
    topics: tuple[str, ...]
    weights: tuple[float, ...]
    names: tuple[str, ...]  # the product's own features and settings, most used first


@dataclass(frozen=True)
class SyntheticDocument:
    source: str
    text: str


def product_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def invented_names(count: int, rng: random.Random) -> tuple[str, ...]:
    names: dict[str, None] = {}
    while len(names) < count:
        names["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return tuple(names)


def make_tenant(
    *, tenant_id: str, size_class: str, chunks: int, rng: random.Random
) -> SyntheticTenant:
    topics = tuple(rng.sample(sorted(TOPICS), rng.randint(4, 8)))
    weights = tuple(rng.paretovariate(1.2) for _ in topics)
    names = invented_names(max(40, chunks // CHUNKS_PER_NAME), rng)
    return SyntheticTenant(tenant_id, size_class, chunks, product_name(rng), topics, weights, names)


ZIPF_EXPONENT = 0.8


@functools.cache
def _zipf_cumulative(size: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) ** exponent for rank in range(size)))


def _zipf_pick(words: Sequence[str], rng: random.Random, exponent: float = ZIPF_EXPONENT) -> str:
    """Words early in a list are drawn more often (rank^-exponent), as in real text."""
    return rng.choices(words, cum_weights=_zipf_cumulative(len(words), exponent))[0]


def _distinct_picks(words: Sequence[str], rng: random.Random, count: int) -> list[str]:
    picks: list[str] = []
    while len(picks) < count:
        word = _zipf_pick(words, rng)
        if word not in picks:
            picks.append(word)
    return picks


FOCUS_SHARE = 0.75


@dataclass(frozen=True)
class Focus:
    """What one section is about: a topic, one of the product's names, a few topic words."""

    topic: str
    name: str
    words: tuple[str, ...]


def make_focus(tenant: SyntheticTenant, rng: random.Random, topic: str | None = None) -> Focus:
    topic = topic or rng.choices(tenant.topics, weights=tenant.weights)[0]
    name = _zipf_pick(tenant.names, rng, 1.0)
    return Focus(topic, name, tuple(_distinct_picks(TOPICS[topic], rng, 4)))


def _fill(
    template: str, *, focus: Focus, product: str, rng: random.Random, name_share: float
) -> str:
    """Most words from the section's focus, some from its topic, a few everyday ones."""
    pool = focus.words if rng.random() < FOCUS_SHARE else TOPICS[focus.topic]
    slots = dict(zip("abcd", _distinct_picks(pool, rng, 4), strict=True))
    if rng.random() < 0.3:  # everyday words mix in, as they do in real documentation
        slots[rng.choice("bcd")] = rng.choice(COMMON)
    if rng.random() < name_share:  # the product's own named things
        slots["a"] = f"{focus.name} {slots['a']}"
    return template.format(
        **slots,
        verb=rng.choice(VERBS),
        verb2=rng.choice(VERBS),
        common=rng.choice(COMMON),
        product=product,
    )


def sentence(focus: Focus, *, product: str, rng: random.Random) -> str:
    text = _fill(rng.choice(SENTENCES), focus=focus, product=product, rng=rng, name_share=0.5)
    return text[0].upper() + text[1:]


def question(tenant: SyntheticTenant, rng: random.Random) -> str:
    """A question about something the tenant documents (a focus its sections may have)."""
    focus = make_focus(tenant, rng)
    return _fill(
        rng.choice(QUESTIONS), focus=focus, product=tenant.product, rng=rng, name_share=0.6
    )


def document(tenant: SyntheticTenant, *, index: int, rng: random.Random) -> SyntheticDocument:
    """A Markdown document about one of the tenant's topics: 2-4 headed sections, each
    about one of the product's names and a few of the topic's words."""
    topic = rng.choices(tenant.topics, weights=tenant.weights)[0]
    sections = [make_focus(tenant, rng, topic) for _ in range(rng.randint(2, 4))]
    lines = [f"# {tenant.product} {sections[0].name} {topic} guide {index}", ""]
    for focus in sections:
        lines += [f"## {focus.name.capitalize()} {focus.words[0]} {focus.words[1]}", ""]
        for _ in range(rng.randint(1, 3)):
            lines += [
                " ".join(
                    sentence(focus, product=tenant.product, rng=rng)
                    for _ in range(rng.randint(3, 6))
                ),
                "",
            ]
    return SyntheticDocument(f"{topic}/guide-{index:07d}.md", "\n".join(lines))


def documents(tenant: SyntheticTenant, *, seed: int, start: int = 0) -> Iterator[SyntheticDocument]:
    """An endless, seeded stream of the tenant's documents, numbered from ``start``."""
    rng = random.Random(f"{seed}:{tenant.tenant_id}:{start}")
    index = start
    while True:
        yield document(tenant, index=index, rng=rng)
        index += 1
