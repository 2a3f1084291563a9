"""The schedule of `chordline bench --tenants N --skew K`: shares, order, rounds."""

from __future__ import annotations

import pytest

from shared.errors import InvalidInput
from shared.tools.bench.tenants import rounds_of, schedule, tenant_rates


def test_the_noisy_tenant_has_skew_shares_and_the_rates_add_up() -> None:
    rates = tenant_rates(24.0, 3, 10.0)
    assert rates == pytest.approx([20.0, 2.0, 2.0])
    assert sum(tenant_rates(25.0, 2, 10.0)) == pytest.approx(25.0)


def test_each_tenant_arrives_as_its_own_process_merged_in_time_order() -> None:
    planned = schedule(22.0, 200.0, 2, 10.0, seed=7)
    offsets = [p.offset for p in planned]
    assert offsets == sorted(offsets)
    assert [p.index for p in planned] == list(range(len(planned)))
    noisy = sum(1 for p in planned if p.tenant == 0)
    quiet = len(planned) - noisy
    assert 8.0 < noisy / quiet < 12.5  # ten times the share, give or take the draw
    # the quiet tenant's arrivals do not depend on how hard the noisy one floods
    quieter = schedule(2.0 + 40.0, 200.0, 2, 20.0, seed=7)
    assert [p.offset for p in planned if p.tenant == 1] == [
        p.offset for p in quieter if p.tenant == 1
    ]


def test_rounds_keep_every_turn_and_start_at_zero() -> None:
    planned = schedule(11.0, 20.0, 2, 10.0, seed=3)
    parts = rounds_of(planned, 20.0, 2)
    assert sorted(p.index for part in parts for p in part) == [p.index for p in planned]
    assert all(0 <= p.offset < 10.0 for part in parts for p in part)


@pytest.mark.parametrize(("tenants", "skew", "field"), [(1, 10.0, "--tenants"), (3, 0.0, "--skew")])
def test_a_bench_that_cannot_run_is_refused_naming_the_option(
    tenants: int, skew: float, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        schedule(10.0, 5.0, tenants, skew, seed=1)
    assert refused.value.field == field


def test_the_turn_bench_tenants_admission_never_binds_at_a_rate_the_bench_accepts() -> None:
    from shared.admission import turn_lifetime_s
    from shared.schemas import TenantSettings
    from shared.tools.bench.turns import BENCH_ADMISSION, MAX_RATE

    admission = TenantSettings.model_validate({"admission": BENCH_ADMISSION}).admission
    assert admission.turns_per_s is not None and admission.turns_per_s >= MAX_RATE
    assert admission.max_in_flight is not None
    assert admission.max_in_flight >= MAX_RATE * turn_lifetime_s()
