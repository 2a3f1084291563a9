"""Tenant settings as typed at the command line: a bad value is an InvalidInput naming the
setting and what is wrong, never a pydantic traceback."""

from __future__ import annotations

import pytest

from shared.db.tenants import apply_overrides, parse_setting_pairs, validate_settings
from shared.errors import InvalidInput
from shared.schemas import TenantSettings


def test_pairs_are_read_as_json_when_they_parse_and_as_text_otherwise() -> None:
    assert parse_setting_pairs(["thresholds.accurate=0.7", "topology=sequential", "x= [1]"]) == {
        "thresholds.accurate": 0.7,
        "topology": "sequential",
        "x": [1],
    }
    with pytest.raises(InvalidInput, match=r"^--set: 'topology' is not key=value"):
        parse_setting_pairs(["topology"])
    with pytest.raises(InvalidInput, match=r"^settings: '=1' is not key=value"):
        parse_setting_pairs(["=1"], field="settings")


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            "thresholds.accurate=abc",
            r"^thresholds\.accurate: input should be a valid number.*; got 'abc'$",
        ),
        ("thresholds.accurate=1.5", r"^thresholds\.accurate: .*less than or equal to 1; got 1\.5$"),
        ("top_k=0", r"^top_k: input should be greater than or equal to 1; got 0$"),
        ("topology=sideways", r"^topology: input should be 'parallel'.*; got 'sideways'$"),
        ("thresholds.partial=0.99", r"^thresholds: thresholds\.partial must not exceed"),
        ("models.agent=5", r"^models\.agent: input should be a valid string; got 5$"),
        ("thresholds.acurate=0.7", r"^settings: unknown setting 'thresholds\.acurate'; known"),
    ],
)
def test_a_bad_value_names_the_setting_and_what_is_wrong(pair: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        apply_overrides(TenantSettings(), parse_setting_pairs([pair]))


def test_every_refused_setting_is_named_and_long_values_are_cut() -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_overrides(TenantSettings(), {"top_k": "x" * 500, "candidates": -1})
    assert caught.value.field == "top_k"
    assert "'xxxx" in caught.value.problem and "...;" in caught.value.problem
    assert len(caught.value.problem) < 250
    assert "; and candidates: input should be greater than or equal to 1" in str(caught.value)


def test_stored_settings_are_validated_the_same_way() -> None:
    assert validate_settings({"topology": "sequential"}).topology.value == "sequential"
    with pytest.raises(InvalidInput, match=r"^colour: extra inputs are not permitted; got 'red'"):
        validate_settings({"colour": "red"})


def test_admission_and_the_interrupt_policy_are_tenant_settings() -> None:
    settings = apply_overrides(
        TenantSettings(),
        parse_setting_pairs(
            [
                "in_flight_policy=interrupt",
                "admission.max_in_flight=20",
                "admission.turns_per_s=null",
                "admission.over_limit=hold",
            ]
        ),
    )
    assert settings.in_flight_policy == "interrupt"
    assert settings.admission.max_in_flight == 20 and settings.admission.turns_per_s is None
    assert settings.admission.over_limit == "hold"
    with pytest.raises(InvalidInput, match=r"^admission\.over_limit: input should be 'refuse'"):
        apply_overrides(TenantSettings(), {"admission.over_limit": "later"})
    with pytest.raises(InvalidInput, match=r"^settings: unknown setting 'admission\.cap'"):
        apply_overrides(TenantSettings(), {"admission.cap": 3})


def test_a_retired_setting_stored_earlier_still_loads_but_cannot_be_set() -> None:
    # short_circuit_research was accepted but nothing read it: it is gone, and a tenant
    # whose stored settings still carry it keeps working.
    stored = {**TenantSettings().model_dump(mode="json"), "short_circuit_research": "fast_path"}
    assert "short_circuit_research" not in validate_settings(stored).model_dump()
    with pytest.raises(InvalidInput, match=r"unknown setting 'short_circuit_research'"):
        apply_overrides(TenantSettings(), {"short_circuit_research": "fast_path"})
