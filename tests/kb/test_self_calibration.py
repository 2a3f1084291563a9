"""Tenants calibrate themselves: after `kb ingest` changes their documents, and on `kb
calibrate --tenant T`, from questions derived from their own chunks and contrasting
material; thresholds set by hand are pinned."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.session import session_scope
from shared.db.tenants import tenant_settings
from shared.errors import InvalidInput
from shared.kb.selfcalibration import (
    TenantText,
    derive_questions,
    scorer_of,
    stale_calibration,
    store_calibration,
    stored_calibration,
)
from shared.schemas import KbLevel, LevelThresholds, TenantSettings
from shared.text import stem, words
from tests.conftest import new_tenant
from tests.kb.conftest import chordline

OWN_KB = Path(__file__).resolve().parents[1] / "data" / "own_kb"
CALIBRATED = re.compile(r"thresholds calibrated: accurate ([0-9.]+), partial ([0-9.]+) \(")


def _kb() -> TenantText:
    return TenantText.of([p.read_text() for p in sorted(OWN_KB.glob("*.md"))] * 2)


def test_derived_questions_come_from_the_documents_and_from_outside_them() -> None:
    kb = _kb()
    derived = derive_questions(kb)
    assert {q.level for q in derived} == set(KbLevel)
    assert derived == derive_questions(_kb())  # the same documents, the same questions
    for q in derived:
        outside = {stem(w) for w in words(q.question)} - kb.vocabulary - {"work", "doe"}
        if q.level is KbLevel.ACCURATE:  # every word of an answered question is the docs'
            assert not outside - {"how"}, q.question
        else:  # a half-answered or unanswered one asks about something they never mention
            assert outside, q.question


_DERIVE = (
    "import sys; from pathlib import Path; "
    "from shared.kb.selfcalibration import TenantText, derive_questions; "
    "kb = TenantText.of([p.read_text() for p in sorted(Path(sys.argv[1]).glob('*.md'))]); "
    "print('\\n'.join(q.level.value + ' ' + q.question for q in derive_questions(kb)))"
)


def test_the_same_documents_give_the_same_questions_in_any_process() -> None:
    """Each process salts Python's string hashes differently: nothing in the derivation may
    follow the order of a set."""
    runs = {
        subprocess.run(
            [sys.executable, "-c", _DERIVE, str(OWN_KB)],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3, 4)
    }
    assert len(runs) == 1 and len(runs.pop().splitlines()) >= 40


def test_too_small_a_knowledge_base_is_named_not_calibrated() -> None:
    with pytest.raises(InvalidInput, match=r"^knowledge base: .*holds 1 chunk"):
        derive_questions(TenantText.of(["# One\n\nOne short chunk."]))


def _thresholds(tenant: str) -> tuple[float, float, bool]:
    with session_scope() as session:
        t = tenant_settings(session, tenant).thresholds
    return t.accurate, t.partial, t.pinned


@pytest.mark.integration
def test_an_ingest_that_changes_the_documents_sets_the_tenants_thresholds(services: None) -> None:
    tenant = new_tenant(with_demo_kb=False)
    before = _thresholds(tenant)
    result = chordline("kb", "ingest", str(OWN_KB), "--tenant", tenant, "--mode", "inline")
    assert result.returncode == 0, result.stderr
    found = CALIBRATED.search(result.stdout)
    assert found, result.stdout
    accurate, partial = float(found.group(1)), float(found.group(2))
    assert _thresholds(tenant) == (accurate, partial, False) != before
    with session_scope() as session:
        report = stored_calibration(session, tenant)
    assert report is not None and report["thresholds"] == {
        "accurate": accurate,
        "partial": partial,
    }
    assert sum(report["questions"].values()) >= 40

    again = chordline("kb", "ingest", str(OWN_KB), "--tenant", tenant, "--mode", "inline")
    assert "calibrated" not in again.stdout  # nothing changed, nothing recalibrated

    as_json = chordline("kb", "calibrate", "--tenant", tenant, "--json")
    assert json.loads(as_json.stdout)["thresholds"] == {"accurate": accurate, "partial": partial}

    other = new_tenant(with_demo_kb=False)  # the same documents in another tenant
    chordline("kb", "ingest", str(OWN_KB), "--tenant", other, "--mode", "inline")
    assert _thresholds(other) == (accurate, partial, False)


@pytest.mark.integration
def test_thresholds_set_by_hand_are_pinned_until_unpinned(services: None) -> None:
    tenant = new_tenant(with_demo_kb=False)
    chordline("kb", "ingest", str(OWN_KB), "--tenant", tenant, "--mode", "inline")
    calibrated = _thresholds(tenant)
    pinned = chordline("tenant", "set", tenant, "thresholds.accurate=0.9", "thresholds.partial=0.2")
    assert pinned.returncode == 0, pinned.stderr
    result = chordline("kb", "calibrate", "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    assert "thresholds pinned at accurate 0.9, partial 0.2" in result.stdout
    assert _thresholds(tenant) == (0.9, 0.2, True)

    chordline("tenant", "set", tenant, "thresholds.pinned=false")
    result = chordline("kb", "calibrate", "--tenant", tenant)
    assert "thresholds calibrated" in result.stdout
    assert _thresholds(tenant) == calibrated


@pytest.mark.integration
def test_calibrate_gives_chunks_stored_before_their_acronym_aliases(services: None) -> None:
    from sqlalchemy import text

    tenant = new_tenant(with_demo_kb=False)
    chordline("kb", "ingest", str(OWN_KB), "--tenant", tenant, "--mode", "inline")

    def aliases() -> list[str]:
        with session_scope() as session:
            return list(
                session.execute(
                    text("SELECT aliases FROM kb_chunks WHERE tenant_id = :t ORDER BY id"),
                    {"t": tenant},
                ).scalars()
            )

    stored = aliases()
    assert "SSO" in stored and "single sign on" in stored
    with session_scope() as session:  # as chunks stored before the aliases existed
        session.execute(
            text("UPDATE kb_chunks SET aliases = '' WHERE tenant_id = :t"), {"t": tenant}
        )
    result = chordline("kb", "calibrate", "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    assert aliases() == stored


@pytest.mark.integration
def test_calibrated_thresholds_are_stored_even_when_they_equal_the_defaults(
    services: None,
) -> None:
    """A tenant's settings are stored as what differs from the defaults; calibrated
    thresholds are kept as numbers anyway, so that new defaults do not move them."""
    tenant = new_tenant(with_demo_kb=False)
    defaults = LevelThresholds()
    store_calibration(tenant, {"thresholds": {}}, defaults)
    with session_scope() as session:
        stored = session.execute(
            text("SELECT settings FROM tenants WHERE id = :t"), {"t": tenant}
        ).scalar_one()
    assert stored["thresholds"] == {"accurate": defaults.accurate, "partial": defaults.partial}


def test_thresholds_from_another_scorer_are_named_stale() -> None:
    settings = TenantSettings()
    now = scorer_of(settings)
    assert stale_calibration("acme", None, settings) is None  # never calibrated: defaults
    assert stale_calibration("acme", {"scorer": now}, settings) is None
    note = stale_calibration("acme", {"thresholds": {}}, settings)  # before scorers were kept
    assert note is not None and "an earlier scorer" in note and now in note
    assert "`chordline kb calibrate --tenant acme`" in note
    assert stale_calibration("acme", {"scorer": "local@1"}, settings) is not None
    pinned = TenantSettings(thresholds=LevelThresholds(accurate=0.8, partial=0.3, pinned=True))
    assert stale_calibration("acme", {"scorer": "local@1"}, pinned) is None  # set by hand


@pytest.mark.integration
def test_kb_commands_warn_when_the_thresholds_came_from_another_scorer(services: None) -> None:
    tenant = new_tenant(with_demo_kb=False)
    chordline("kb", "ingest", str(OWN_KB), "--tenant", tenant, "--mode", "inline")
    with session_scope() as session:
        report = stored_calibration(session, tenant)
        settings = tenant_settings(session, tenant)
    assert report is not None and report["scorer"] == scorer_of(settings)
    fresh = chordline("kb", "search", "Does it integrate with Xero?", "--tenant", tenant)
    assert fresh.returncode == 0, fresh.stderr
    assert "warning" not in fresh.stderr

    with session_scope() as session:  # as a calibration made by an earlier release left it
        session.execute(
            text("UPDATE tenants SET calibration = calibration - 'scorer' WHERE id = :t"),
            {"t": tenant},
        )
    stale = chordline("kb", "search", "Does it integrate with Xero?", "--tenant", tenant)
    assert stale.returncode == 0, stale.stderr
    assert "warning: the thresholds were calibrated with an earlier scorer" in stale.stderr
    assert f"kb calibrate --tenant {tenant}" in stale.stderr
    as_json = chordline("kb", "search", "Xero?", "--tenant", tenant, "--json")
    assert "an earlier scorer" in json.loads(as_json.stdout)["calibration_warning"]

    chordline("kb", "calibrate", "--tenant", tenant)
    again = chordline("kb", "search", "Does it integrate with Xero?", "--tenant", tenant)
    assert "warning" not in again.stderr
