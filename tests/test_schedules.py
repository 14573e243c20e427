import math

import pytest

from random_ltd.schedules import MSLG, ConfigError, ConstantKeep, change_points


def simulate_every_steps(seq_len, start, increment, every, steps):
    """Reference: a counter that adds ``increment`` each time ``every`` more steps have passed."""
    kept, values = start, []
    for step in range(steps):
        if step > 0 and step % every == 0:
            kept = min(seq_len, kept + increment)
        values.append(kept)
    return values


def simulate_every_tokens(seq_len, start, increment, every_tokens, tokens_per_step, steps):
    """Reference: tokens consumed before each step; one increment per ``every_tokens`` crossed."""
    kept, threshold, values = start, every_tokens, []
    for step in range(steps):
        while step * tokens_per_step >= threshold:
            kept = min(seq_len, kept + increment)
            threshold += every_tokens
        values.append(kept)
    return values


def scan_changes(schedule, steps):
    values = [schedule(step) for step in range(steps)]
    return [(0, values[0])] + [(t, v) for t, v in enumerate(values) if t and v != values[t - 1]]


@pytest.mark.parametrize("seq_len,start,increment,every",
                         [(64, 8, 8, 5), (100, 10, 16, 3), (32, 32, 4, 2), (50, 1, 7, 1)])
def test_every_steps_matches_step_counter(seq_len, start, increment, every):
    schedule = MSLG(seq_len, start, increment, every_steps=every)
    steps = every * (seq_len // increment + 3)
    assert [schedule(t) for t in range(steps)] == simulate_every_steps(seq_len, start, increment, every, steps)


@pytest.mark.parametrize("every_tokens,tokens_per_step", [(1000, 256), (256, 256), (100, 256), (7000, 3 * 97)])
def test_every_tokens_matches_token_counter(every_tokens, tokens_per_step):
    schedule = MSLG(128, 16, 16, every_tokens=every_tokens, tokens_per_step=tokens_per_step)
    steps = math.ceil(8 * every_tokens / tokens_per_step) + 5
    expected = simulate_every_tokens(128, 16, 16, every_tokens, tokens_per_step, steps)
    assert [schedule(t) for t in range(steps)] == expected


def test_every_tokens_float_is_exact_paper_gpt():
    # +16 every 1.75B tokens from 128 to 2048: 120 increments, full length after 210B tokens
    schedule = MSLG(2048, 128, 16, every_tokens=1.75e9, tokens_per_step=256 * 2048)
    full = schedule.full_step
    assert schedule(full) == 2048 and schedule(full - 1) < 2048
    assert (full - 1) * 256 * 2048 < 210e9 <= full * 256 * 2048


@pytest.mark.parametrize("seq_len,start,increment,full_at", [
    (2048, 128, 16, 1000), (197, 66, 16, 800), (197, 66, 1, 50), (100, 10, 16, 7), (64, 63, 16, 10), (64, 8, 8, 1),
])
def test_full_at_step_reaches_full_length_exactly_there(seq_len, start, increment, full_at):
    schedule = MSLG(seq_len, start, increment, full_at=full_at)
    values = [schedule(t) for t in range(full_at + 5)]
    assert values[full_at] == seq_len and values[full_at - 1] < seq_len
    assert values[0] == start and values == sorted(values)
    assert all(start <= v <= seq_len and (v - start) % increment == 0 for v in values if v < seq_len)
    assert schedule.full_step == full_at


def test_full_at_follows_paper_interval_when_divisible():
    # a_0 / s_dec = (512 - 128) / 16 = 24 increments over T_0 = 240 steps: T_dec = 10
    schedule = MSLG(512, 128, 16, full_at=240)
    assert [t for t, _ in change_points(schedule, 1000)] == list(range(0, 241, 10))


def test_full_at_fraction_needs_total_steps_then_resolves():
    schedule = MSLG(197, 66, 16, full_at=0.8)
    with pytest.raises(ConfigError, match="total_steps"):
        schedule(3)
    resolved = schedule.resolve(total_steps=1000)
    assert resolved.full_step == 800 and resolved(800) == 197 and resolved(799) < 197
    assert MSLG(197, 66, 16, full_at=0.8, total_steps=1000)(500) == resolved(500)


def test_every_tokens_needs_tokens_per_step():
    with pytest.raises(ConfigError, match="tokens_per_step"):
        MSLG(128, 16, 16, every_tokens=1000)(1)


@pytest.mark.parametrize("multiple_of", [8, 24, 64])
def test_multiple_of_rounds_down_between_start_and_full(multiple_of):
    plain = MSLG(200, 30, 10, every_steps=3)
    rounded = MSLG(200, 30, 10, every_steps=3, multiple_of=multiple_of)
    values = [rounded(t) for t in range(80)]
    assert values == sorted(values) and min(values) == 30 and max(values) == 200
    for t, value in enumerate(values):
        assert value in (30, 200) or value % multiple_of == 0
        assert value <= plain(t) and (value == 200) == (plain(t) == 200)


def build_variety():
    return [
        MSLG(2048, 128, 16, every_tokens=1.75e9, tokens_per_step=524288),
        MSLG(197, 66, 16, full_at=0.8, total_steps=777),
        MSLG(100, 10, 16, full_at=7),
        MSLG(200, 30, 10, every_steps=3, multiple_of=24),
        MSLG(64, 64, 8, every_steps=2),
    ]


@pytest.mark.parametrize("schedule", build_variety(), ids=repr)
def test_change_points_formula_equals_scan(schedule):
    steps = min(schedule.full_step + 20, 5000) if schedule.full_step < 5000 else 5000
    assert schedule.change_points(steps) == scan_changes(schedule, steps)


def test_generic_change_points_equal_formula():
    schedule = MSLG(2048, 128, 16, every_tokens=1.75e9, tokens_per_step=524288)
    generic = change_points(lambda_schedule(schedule), 600_000)
    assert generic == schedule.change_points(600_000) and len(generic) == 121


def lambda_schedule(schedule):
    class Opaque:  # no change_points method: forces the binary search
        seq_len = schedule.seq_len

        def __call__(self, step):
            return schedule(step)
    return Opaque()


@pytest.mark.parametrize("schedule", build_variety(), ids=repr)
def test_state_dict_round_trip(schedule):
    other = MSLG(8, 1, 1, every_steps=1)
    other.load_state_dict(schedule.state_dict())
    assert [other(t) for t in range(0, 3000, 7)] == [schedule(t) for t in range(0, 3000, 7)]
    assert other.state_dict() == schedule.state_dict()


def test_state_dict_of_another_type_is_refused():
    with pytest.raises(ConfigError, match="ConstantKeep"):
        MSLG(8, 1, 1, every_steps=1).load_state_dict(ConstantKeep(8, 4).state_dict())


@pytest.mark.parametrize("kwargs,field", [
    (dict(seq_len=128, start=129, increment=16, every_steps=1), "start"),
    (dict(seq_len=128, start=0, increment=16, every_steps=1), "start"),
    (dict(seq_len=0, start=1, increment=16, every_steps=1), "seq_len"),
    (dict(seq_len=128, start=16, increment=0, every_steps=1), "increment"),
    (dict(seq_len=128, start=16, increment=-16, every_steps=1), "increment"),
    (dict(seq_len=128, start=16, increment=2.5, every_steps=1), "increment"),
    (dict(seq_len=128, start=16, increment=16, every_steps=0), "every_steps"),
    (dict(seq_len=128, start=16, increment=16, every_steps=True), "every_steps"),
    (dict(seq_len=128, start=16, increment=16, every_tokens=0), "every_tokens"),
    (dict(seq_len=128, start=16, increment=16, every_tokens=-3.0), "every_tokens"),
    (dict(seq_len=128, start=16, increment=16, every_tokens=float("nan")), "every_tokens"),
    (dict(seq_len=128, start=16, increment=16, full_at=0), "full_at"),
    (dict(seq_len=128, start=16, increment=16, full_at=1.5), "full_at"),
    (dict(seq_len=128, start=16, increment=16, full_at=-0.2), "full_at"),
    (dict(seq_len=128, start=16, increment=16, full_at="10"), "full_at"),
    (dict(seq_len=128, start=16, increment=16), "every_steps"),
    (dict(seq_len=128, start=16, increment=16, every_steps=2, full_at=10), "every_steps"),
    (dict(seq_len=128, start=16, increment=16, every_steps=2, multiple_of=0), "multiple_of"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as caught:
        MSLG(**kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize("step", [-1, 1.0, True])
def test_bad_step(step):
    with pytest.raises(ConfigError, match="step"):
        MSLG(128, 16, 16, every_steps=2)(step)


def test_constant_keep():
    schedule = ConstantKeep(128, 40)
    assert {schedule(t) for t in range(100)} == {40} and schedule.full_step is None
    assert ConstantKeep(128, 128).full_step == 0
    copy = ConstantKeep(2, 1)
    copy.load_state_dict(schedule.state_dict())
    assert copy(5) == 40 and copy.seq_len == 128
    for keep in (0, 129, 3.5):
        with pytest.raises(ConfigError, match="keep"):
            ConstantKeep(128, keep)
