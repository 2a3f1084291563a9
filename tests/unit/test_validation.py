from __future__ import annotations

import pytest

from shared.errors import InvalidInput
from shared.schemas import TenantSettings
from shared.validation import check_message, check_slug, check_turn_id


def test_message_limits_name_the_field_and_the_limit() -> None:
    with pytest.raises(InvalidInput, match="message: is 9 characters; the limit is 8"):
        check_message("x" * 9, max_chars=8)
    with pytest.raises(InvalidInput, match="message: must not be empty"):
        check_message("   ", max_chars=8)
    with pytest.raises(InvalidInput, match="NUL"):
        check_message("a\x00b", max_chars=8)
    with pytest.raises(InvalidInput, match="UTF-8"):
        check_message("\ud800", max_chars=8)


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "../etc", 5])
def test_slugs_are_bounded_and_printable(bad: object) -> None:
    with pytest.raises(InvalidInput, match=r"^tenant: "):
        check_slug("tenant", bad)


def test_turn_ids_must_be_uuids() -> None:
    with pytest.raises(InvalidInput, match="turn_id"):
        check_turn_id("not-a-uuid")


def test_tenant_settings_overrides_are_validated_and_unknown_keys_refused() -> None:
    settings = TenantSettings().with_overrides(
        {"thresholds.accurate": 0.9, "topology": "sequential"}
    )
    assert settings.thresholds.accurate == 0.9
    assert settings.topology.value == "sequential"
    with pytest.raises(KeyError):
        TenantSettings().with_overrides({"thresholds.nope": 1})
    with pytest.raises(ValueError, match="partial"):
        TenantSettings().with_overrides({"thresholds.partial": 0.99})
