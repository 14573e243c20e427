import pytest

from random_ltd.accounting import layer_tokens_per_step
from random_ltd.errors import ConfigError
from random_ltd.run import Run, check_schedule, resolve_schedule
from random_ltd.schedules import MSLG, ConstantKeep

SEQ, BATCH, LAYERS, DROP = 32, 4, 6, (1, 2, 3, 4)


def run(schedule, **kwargs):
    return Run.build(schedule, batch_size=BATCH, num_layers=LAYERS, drop_layers=DROP, **kwargs)


def brute_force(schedule, steps, batch=BATCH):
    return sum(batch * (len(DROP) * schedule(t) + (LAYERS - len(DROP)) * SEQ) for t in range(steps))


def test_kept_keep_and_layer_tokens_follow_the_schedule():
    schedule = MSLG(SEQ, 8, 8, every_steps=3)
    numbers = run(schedule)
    assert [numbers.kept(t) for t in range(12)] == [schedule(t) for t in range(12)]
    assert [numbers.keep(t) for t in range(12)] == [None if schedule(t) == SEQ else schedule(t) for t in range(12)]
    assert numbers.layer_tokens(8) == layer_tokens_per_step(SEQ, BATCH, LAYERS, list(DROP), 8)
    assert numbers.layer_tokens(8, batch_size=1) == 4 * 8 + 2 * SEQ
    assert [numbers.layer_tokens_before(t) for t in range(15)] == [brute_force(schedule, t) for t in range(15)]


def test_no_schedule_drops_nothing():
    numbers = Run.build(None, seq_len=SEQ, batch_size=BATCH, num_layers=LAYERS, drop_layers=DROP)
    assert not numbers.dropping and numbers.kept(3) == SEQ and numbers.keep(3) is None
    assert numbers.layer_tokens_before(5) == 5 * BATCH * SEQ * LAYERS


def test_the_schedule_is_bound_to_the_run_where_it_leaves_numbers_open():
    numbers = run(MSLG(SEQ, 8, 8, every_tokens=2 * BATCH * SEQ, full_at=None), total_steps=100)
    assert numbers.schedule.tokens_per_step == BATCH * SEQ and [numbers.kept(t) for t in range(4)] == [8, 8, 16, 16]
    fraction = run(MSLG(SEQ, 8, 8, full_at=0.5), total_steps=6)
    assert fraction.kept(3) == SEQ and fraction.kept(2) < SEQ
    own = MSLG(SEQ, 8, 8, every_tokens=100, tokens_per_step=50, total_steps=9)
    assert resolve_schedule(own, tokens_per_step=7, total_steps=3).state_dict() == own.state_dict()  # its own win
    constant = ConstantKeep(SEQ, 8)
    assert resolve_schedule(constant, tokens_per_step=7) is constant


def test_a_schedule_missing_the_runs_length_says_so_at_build():
    with pytest.raises(ConfigError, match="total_steps"):
        run(MSLG(SEQ, 8, 8, full_at=0.5))
    assert run(MSLG(SEQ, 8, 8, every_steps=2)).kept(2) == 16  # no length needed


def test_lr_settings_budget_the_run():
    schedule = MSLG(SEQ, 8, 8, every_steps=2)
    numbers = run(schedule, total_steps=10)
    assert numbers.lr_settings(True, warmup_steps=3, decay="linear") == {
        "total_layer_tokens": brute_force(schedule, 10), "warmup_layer_tokens": brute_force(schedule, 3),
        "decay": "linear"}
    assert numbers.lr_settings({"total_layer_tokens": 5, "decay": "cosine"}, decay="linear")["decay"] == "cosine"
    with pytest.raises(ConfigError, match="layer_token_lr"):
        run(schedule).lr_settings(True)


def test_errors_name_the_setting():
    with pytest.raises(ConfigError, match="schedule"):
        run(ConstantKeep(SEQ, 8), seq_len=SEQ + 1)
    with pytest.raises(ConfigError, match="drop_layers"):
        Run.build(None, seq_len=SEQ, batch_size=BATCH, num_layers=LAYERS, drop_layers=[1, 1])
    with pytest.raises(ConfigError, match="schedule"):
        check_schedule(128)
    with pytest.raises(ConfigError, match="cannot be rebuilt"):
        check_schedule({"type": "Other"})
    assert check_schedule(MSLG(SEQ, 8, 8, every_steps=2).state_dict()).state_dict() == MSLG(
        SEQ, 8, 8, every_steps=2).state_dict()
