import itertools

import pytest

from cfd3d.distill.methods import get_method
from cfd3d.distill.timesteps import TIMESTEP_KINDS, TimestepSchedule, timestep_fraction
from cfd3d.errors import ConfigError


def test_annealed_passes_through_the_paper_knots():
    s = TimestepSchedule(kind="annealed")
    total = 25001  # steps 0..25000 so that progress = step / 25000 exactly
    assert timestep_fraction(s, 0, total) == pytest.approx(0.98)
    assert timestep_fraction(s, 2500, total) == pytest.approx(0.69)
    assert timestep_fraction(s, 12500, total) == pytest.approx(0.40)
    assert timestep_fraction(s, 25000, total) == pytest.approx(0.21)
    assert timestep_fraction(s, 1250, total) == pytest.approx((0.98 + 0.69) / 2)


@pytest.mark.parametrize("kind", ["annealed", "linear", "sqrt", "dreamtime"])
def test_deterministic_schedules_decrease_from_t_max(kind):
    s = TimestepSchedule(kind=kind)
    values = [timestep_fraction(s, i, 200) for i in range(200)]
    assert values[0] == pytest.approx(0.98, abs=1e-3)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))
    assert min(values) >= s.t_min - 1e-9


def test_sqrt_schedule_formula():
    s = TimestepSchedule(kind="sqrt")
    assert timestep_fraction(s, 25, 101) == pytest.approx(0.98 - 0.96 * 0.5)


def test_dreamtime_spends_most_steps_in_its_flat_region():
    s = TimestepSchedule(kind="dreamtime")
    values = [timestep_fraction(s, i, 1000) for i in range(1000)]
    inside = sum(s.dreamtime_m2 <= v <= s.dreamtime_m1 for v in values) / len(values)
    assert inside > 0.45


def test_uniform_is_random_in_range_and_a_pure_function_of_seed_and_step():
    s = TimestepSchedule(kind="uniform")
    values = [timestep_fraction(s, i, 500, seed=7) for i in range(500)]
    assert min(values) >= 0.02 and max(values) <= 0.98
    assert max(values) - min(values) > 0.8
    assert values == [timestep_fraction(s, i, 500, seed=7) for i in range(500)]
    assert values != [timestep_fraction(s, i, 500, seed=8) for i in range(500)]


def test_bad_schedules_are_config_errors():
    with pytest.raises(ConfigError, match="valid: " + ", ".join(TIMESTEP_KINDS)):
        TimestepSchedule(kind="cubic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="t_min <= t_max"):
        TimestepSchedule(t_min=0.5, t_max=0.2)
    with pytest.raises(ConfigError, match="knots"):
        TimestepSchedule(knots=((0.0, 0.9), (0.5, 0.2)))


def test_methods_registry():
    assert get_method("cfd").timesteps.kind == "annealed"
    assert get_method("sds").noise == "fresh"
    with pytest.raises(ConfigError, match="valid: cfd, sds, fsd, vsd, ism, sdi"):
        get_method("dds")


def test_gamma_decays_geometrically_from_start_to_end():
    from cfd3d.distill.gamma import gamma_at

    assert gamma_at(0, 101) == pytest.approx(1e-2)
    assert gamma_at(50, 101) == pytest.approx(1e-3)
    assert gamma_at(100, 101) == pytest.approx(1e-4)
    assert gamma_at(7, 101, 0.0, 0.0) == 0.0
    with pytest.raises(ConfigError, match="gamma"):
        gamma_at(0, 10, start=2.0)
