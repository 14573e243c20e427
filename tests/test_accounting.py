import pytest
import torch

from random_ltd.accounting import (
    check_capacity,
    count_drop_layers,
    flops_per_step,
    kept_segments,
    layer_flops,
    layer_tokens_per_step,
    mod_flops_per_step,
    mod_layer_tokens_per_step,
    total_flops,
    total_layer_tokens,
)
from random_ltd.deepspeed_config import DeepSpeedLinear
from random_ltd.schedules import MSLG, ConfigError, ConstantKeep


def brute_force_layer_tokens(seq_len, batch, num_layers, drop_layers, kept):
    """Tokens each layer processed, layer by layer and sequence by sequence."""
    return sum(min(kept, seq_len) if layer in drop_layers else seq_len
               for _ in range(batch) for layer in range(num_layers))


@pytest.mark.parametrize("kept", [1, 7, 64, 100])
def test_per_step_equals_brute_force(kept):
    drop = [1, 2, 4]
    assert layer_tokens_per_step(64, 3, 6, drop, kept) == brute_force_layer_tokens(64, 3, 6, drop, kept)
    assert layer_tokens_per_step(64, 3, 6, len(drop), kept) == brute_force_layer_tokens(64, 3, 6, drop, kept)


def test_nothing_dropped_is_the_baseline():
    assert layer_tokens_per_step(64, 3, 6, [1, 2], None) == layer_tokens_per_step(64, 3, 6, 0, 5) == 3 * 64 * 6


SCHEDULES = [
    MSLG(2048, 128, 16, every_tokens=1.75e6, tokens_per_step=32 * 2048),
    MSLG(197, 66, 16, full_at=0.8, total_steps=3000),
    MSLG(200, 30, 10, every_steps=37, multiple_of=24),
    ConstantKeep(256, 100),
    DeepSpeedLinear(100, 2040, 16, 1000, exact=True),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_closed_form_totals_equal_step_by_step_sums(schedule):
    steps, batch, layers, drop = 3000, 32, 24, list(range(1, 23))
    stepwise_tokens = sum(layer_tokens_per_step(schedule.seq_len, batch, layers, drop, schedule(t))
                          for t in range(steps))
    assert total_layer_tokens(schedule, steps, batch_size=batch, num_layers=layers, drop_layers=drop) == stepwise_tokens
    stepwise_flops = sum(flops_per_step(schedule.seq_len, batch, layers, 256, kept=schedule(t), drop_layers=drop,
                                        vocab_size=1000) for t in range(steps))
    assert total_flops(schedule, steps, batch_size=batch, num_layers=layers, drop_layers=drop, d_model=256,
                       vocab_size=1000) == stepwise_flops
    assert sum(count for _, _, count in kept_segments(schedule, steps)) == steps


def counted_matmul_flops(tokens, d_model, ffn_dim):
    """FLOPs of one layer's matrix products, counted by running them with a FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, tokens, d_model)
    weights = ([torch.zeros(d_model, d_model) for _ in range(4)]
               + [torch.zeros(d_model, ffn_dim), torch.zeros(ffn_dim, d_model)])
    with FlopCounterMode(display=False) as counter:
        q, k, v = x @ weights[0], x @ weights[1], x @ weights[2]
        attended = (q @ k.transpose(1, 2)) @ v
        hidden = attended @ weights[3]
        (hidden @ weights[4]) @ weights[5]
    return counter.get_total_flops()


@pytest.mark.parametrize("tokens,d_model,ffn_dim", [(16, 32, 128), (5, 8, 24)])
def test_layer_flops_equal_torch_flop_counter(tokens, d_model, ffn_dim):
    assert layer_flops(tokens, d_model, ffn_dim) == counted_matmul_flops(tokens, d_model, ffn_dim)


def test_flops_per_step_composition():
    s, d, layers = 128, 64, 6
    one_layer = layer_flops(s, d, 4 * d)
    assert flops_per_step(s, 2, layers, d, backward=False) == 2 * layers * one_layer
    assert flops_per_step(s, 2, layers, d) == 3 * 2 * layers * one_layer
    dropped = flops_per_step(s, 2, layers, d, kept=32, drop_layers=[1, 2, 3, 4], vocab_size=100, backward=False)
    assert dropped == 2 * (4 * layer_flops(32, d, 4 * d) + 2 * one_layer + 2 * s * d * 100)


def test_flop_saving_exceeds_layer_token_saving_because_of_attention():
    base_tokens, base_flops = layer_tokens_per_step(2048, 1, 24, 22, None), flops_per_step(2048, 1, 24, 1024)
    token_saving = 1 - layer_tokens_per_step(2048, 1, 24, 22, 512) / base_tokens
    flop_saving = 1 - flops_per_step(2048, 1, 24, 1024, kept=512, drop_layers=22) / base_flops
    assert flop_saving > token_saving


@pytest.mark.parametrize("call", [
    lambda: layer_tokens_per_step(0, 1, 4, 2, 1),
    lambda: layer_tokens_per_step(8, 0, 4, 2, 1),
    lambda: layer_tokens_per_step(8, 1, 4, 5, 1),
    lambda: layer_tokens_per_step(8, 1, 4, [1, 1], 1),
    lambda: layer_tokens_per_step(8, 1, 4, [4], 1),
    lambda: layer_tokens_per_step(8, 1, 4, [1], 0),
    lambda: flops_per_step(8, 1, 4, 0),
    lambda: flops_per_step(8, 1, 4, 8, vocab_size=-1),
])
def test_bad_inputs(call):
    with pytest.raises(ConfigError):
        call()


def test_negative_layer_indices_count_once():
    assert count_drop_layers(6, [1, -2]) == 2
    with pytest.raises(ConfigError):
        count_drop_layers(6, [4, -2])


@pytest.mark.parametrize("capacity", [0.125, 1.0, 2, 64, 5000])
def test_capacity_is_a_fraction_in_0_1_or_a_count_of_at_least_2(capacity):
    checked = check_capacity(capacity)
    assert checked == capacity and type(checked) is type(capacity)


@pytest.mark.parametrize("capacity, reason", [
    (0.0, r"kept fraction must lie in \(0, 1\], got 0.0"),
    (1.5, r"kept fraction must lie in \(0, 1\], got 1.5"),
    (-0.25, "kept fraction must lie in"),
    (float("nan"), "kept fraction must lie in .*nan"),
    (float("inf"), "kept fraction must lie in"),
    (1, "an int 1 would keep one token; write 1.0"),
    (0, "count must be at least 2, got 0"),
    (-3, "count must be at least 2"),
    (True, "fraction in \\(0, 1\\] or an int token count, got True"),
    ("0.5", "fraction in .* got '0.5'"),
    (None, "fraction in"),
])
def test_bad_capacity_is_a_config_error_naming_the_setting(capacity, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        check_capacity(capacity)
    assert caught.value.field == "mod_capacity"
    with pytest.raises(ConfigError, match="^keep: "):
        check_capacity(capacity, field="keep")


@pytest.mark.parametrize("call", [
    lambda capacity: mod_layer_tokens_per_step(64, 2, 4, [1, 3], capacity),
    lambda capacity: mod_flops_per_step(64, 2, 4, 32, routed_layers=[1, 3], capacity=capacity),
])
@pytest.mark.parametrize("capacity", [0, 1, 1.5, True])
def test_mod_accounting_refuses_a_bad_capacity(call, capacity):
    with pytest.raises(ConfigError) as caught:
        call(capacity)
    assert caught.value.field == "mod_capacity"
