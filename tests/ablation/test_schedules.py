"""A user's schedule over a model's paper settings (libjax.ablation.schedule_for)."""

from libjax import ablation

MODADD = {"ablate_every_vec_cutoff": 10, "exp_base": 1.05}


def test_the_model_settings_fill_what_is_not_given():
    s = ablation.schedule_for(MODADD)
    assert s == ablation.Schedule("exponential", 10, 1.05)
    assert len(s.n_ablated(129)) == 48  # the paper's modadd schedule (docs/method.md 3.2)


def test_given_values_win_and_none_is_a_cutoff():
    assert ablation.schedule_for(MODADD, ablate_every_vec_cutoff=None).ablate_every_vec_cutoff \
        is None
    s = ablation.schedule_for(MODADD, "linear", exp_base=3.0, n_points=5, specific_points=[4])
    assert (s.kind, s.exp_base, s.n_points, s.specific_points) == ("linear", 3.0, 5, (4,))


def test_without_model_settings_the_base_is_two():
    assert ablation.schedule_for({}).exp_base == 2.0
