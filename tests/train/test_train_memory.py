from random_ltd.train.memory import arm_state_bytes, fits_together, parameter_estimate
from random_ltd.train.tasks import ModelShape

GPT_SMALL = ModelShape(num_layers=6, hidden=192, seq_len=128, ffn_hidden=768, vocab_size=4096)


def test_the_estimate_counts_layers_embedding_and_output_layer():
    assert parameter_estimate(GPT_SMALL) == 6 * (4 * 192 ** 2 + 2 * 192 * 768) + 2 * 4096 * 192
    assert arm_state_bytes(GPT_SMALL) == 16 * parameter_estimate(GPT_SMALL)


def test_arms_fit_together_when_the_extra_states_take_at_most_half_the_free_memory():
    extra = arm_state_bytes(GPT_SMALL)
    assert fits_together(2, GPT_SMALL, free=2 * extra)
    assert not fits_together(2, GPT_SMALL, free=2 * extra - 1)
    assert fits_together(1, GPT_SMALL, free=0)  # one arm needs nothing extra
    assert fits_together(2, GPT_SMALL, free=None)  # unknown free memory: small models still run together
    huge = ModelShape(num_layers=80, hidden=8192, seq_len=4096, ffn_hidden=28672, vocab_size=128000)
    assert not fits_together(2, huge, free=None)
