import pytest
import torch
import torch.nn as nn

import random_ltd
from random_ltd.driver import Driver
from random_ltd.lr import LayerTokenLR
from random_ltd.schedules import MSLG, ConfigError, ConstantKeep

SEQ, BATCH, LAYERS, DROP = 32, 4, 6, [1, 2, 3, 4]


class FakeHandle:
    """The handle API the driver relies on, recording every kept length it is given."""

    def __init__(self, num_layers=LAYERS, drop_layers=DROP):
        self.num_layers, self.drop_layers = num_layers, list(drop_layers)
        self.keeps, self.keep = [], None

    def set_keep(self, keep):
        self.keeps.append(keep)
        self.keep = keep

    def state_dict(self):
        return {"keep": self.keep}

    def load_state_dict(self, state):
        self.keep = state["keep"]


def optimizer():
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def train(driver, steps):
    kept = []
    for _ in range(steps):
        kept.append(driver.before_step())
        if driver.lr_scheduler is not None:
            driver.lr_scheduler.optimizer.step()
        driver.after_step()
    return kept


def test_sets_the_schedule_on_the_handle_and_counts_like_brute_force():
    schedule = MSLG(SEQ, 8, 8, every_steps=3)
    handle = FakeHandle()
    driver = Driver(handle, schedule, batch_size=BATCH, seq_len=SEQ)
    kept = train(driver, 15)
    assert kept == [schedule(t) for t in range(15)]
    assert handle.keeps == [None if k == SEQ else k for k in kept]
    brute = sum(BATCH * (len(DROP) * k + (LAYERS - len(DROP)) * SEQ) for k in kept)
    assert driver.layer_tokens == brute and driver.step == 15 and driver.tokens == 15 * BATCH * SEQ


def test_steps_layer_token_lr_by_the_layer_tokens_of_each_step():
    schedule = MSLG(SEQ, 8, 8, every_steps=2)
    lr = LayerTokenLR(optimizer(), total_layer_tokens=10**6, decay="linear")
    driver = Driver(FakeHandle(), schedule, batch_size=BATCH, seq_len=SEQ, lr_scheduler=lr)
    train(driver, 9)
    assert lr.consumed_layer_tokens == driver.layer_tokens
    assert driver.metrics()["random_ltd/lr"] == pytest.approx(1.0 - driver.layer_tokens / 10**6)


def test_iteration_scheduler_is_stepped_once_per_step():
    lr = torch.optim.lr_scheduler.StepLR(optimizer(), step_size=1, gamma=0.5)
    driver = Driver(FakeHandle(), ConstantKeep(SEQ, 8), batch_size=BATCH, seq_len=SEQ, lr_scheduler=lr)
    train(driver, 3)
    assert lr.get_last_lr()[0] == pytest.approx(0.125)


def test_baseline_arm_without_handle_drops_nothing():
    lr = LayerTokenLR(optimizer(), total_layer_tokens=20 * BATCH * SEQ * LAYERS, decay="cosine")
    driver = Driver(None, MSLG(SEQ, 8, 8, every_steps=2), batch_size=BATCH, seq_len=SEQ, lr_scheduler=lr,
                    num_layers=LAYERS, drop_layers=DROP)
    assert train(driver, 20) == [SEQ] * 20
    assert driver.layer_tokens == 20 * BATCH * SEQ * LAYERS
    assert driver.metrics()["random_ltd/lr"] == pytest.approx(0.0, abs=1e-12)


def test_token_interval_uses_the_drivers_tokens_per_step():
    driver = Driver(FakeHandle(), MSLG(SEQ, 8, 8, every_tokens=3 * BATCH * SEQ), batch_size=BATCH, seq_len=SEQ)
    assert train(driver, 7) == [8, 8, 8, 16, 16, 16, 24]


def test_metrics_are_namespaced():
    driver = Driver(FakeHandle(), ConstantKeep(SEQ, 8), batch_size=BATCH, seq_len=SEQ)
    assert driver.metrics()["random_ltd/kept_len"] == 8
    train(driver, 2)
    metrics = driver.metrics()
    assert set(metrics) == {"random_ltd/kept_len", "random_ltd/layer_tokens", "random_ltd/tokens", "random_ltd/step"}
    assert metrics["random_ltd/layer_tokens"] == driver.layer_tokens


def test_short_last_batch():
    driver = Driver(FakeHandle(), ConstantKeep(SEQ, 8), batch_size=BATCH, seq_len=SEQ)
    driver.before_step()
    assert driver.after_step(batch_size=1) == 1 * (4 * 8 + 2 * SEQ)


def tiny_model():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)


def run_real(steps, resume_at=None):
    """Train a tiny encoder with the driver; optionally save at ``resume_at`` and continue in fresh objects."""
    def build():
        model = tiny_model()
        handle = random_ltd.apply(model, seed=7)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lr = LayerTokenLR(opt, total_layer_tokens=steps * BATCH * SEQ * LAYERS, warmup_layer_tokens=BATCH * SEQ * 10)
        return model, opt, Driver(handle, MSLG(SEQ, 8, 8, every_steps=2), batch_size=BATCH, seq_len=SEQ,
                                  lr_scheduler=lr)

    model, opt, driver = build()
    data = torch.randn(steps, BATCH, SEQ, 16, generator=torch.Generator().manual_seed(1))
    log = []
    for step in range(steps):
        if step == resume_at:
            saved = {"model": model.state_dict(), "opt": opt.state_dict(), "driver": driver.state_dict(),
                     "rng": torch.get_rng_state()}
            model, opt, driver = build()
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            driver.load_state_dict(saved["driver"])
            torch.set_rng_state(saved["rng"])  # the stream random-LTD draws from
        driver.before_step()
        model(data[step]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        driver.after_step()
        log.append(driver.metrics())
    return log, [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread avoids OpenMP spin contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_with_a_real_model_is_exact(one_thread):
    straight, weights = run_real(10)
    resumed, resumed_weights = run_real(10, resume_at=4)
    assert resumed == straight
    assert all(torch.equal(a, b) for a, b in zip(weights, resumed_weights, strict=True))
    assert [m["random_ltd/kept_len"] for m in straight] == [8, 8, 16, 16, 24, 24, 32, 32, 32, 32]


def test_errors():
    with pytest.raises(ConfigError, match="schedule"):
        Driver(FakeHandle(), ConstantKeep(SEQ + 1, 8), batch_size=BATCH, seq_len=SEQ)
    with pytest.raises(ConfigError, match="num_layers"):
        Driver(None, None, batch_size=BATCH, seq_len=SEQ)
    with pytest.raises(ConfigError, match="num_layers"):
        Driver(FakeHandle(), None, batch_size=BATCH, seq_len=SEQ, num_layers=LAYERS + 1)
    with pytest.raises(ConfigError, match="batch_size"):
        Driver(FakeHandle(), None, batch_size=0, seq_len=SEQ)
    driver = Driver(FakeHandle(), ConstantKeep(SEQ, 8), batch_size=BATCH, seq_len=SEQ)
    with pytest.raises(random_ltd.RandomLTDError, match="before_step"):
        driver.after_step()
    state = driver.state_dict()
    driver.before_step()
    with pytest.raises(random_ltd.RandomLTDError, match="middle of a step"):
        driver.load_state_dict(state)
    other = Driver(FakeHandle(), None, batch_size=BATCH, seq_len=SEQ)
    with pytest.raises(ConfigError, match="schedule"):
        other.load_state_dict(state)


def readme_plan_section():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "planning.md").read_text()
    return text.split("<!-- section: plan -->")[1].split("<!-- /section: plan -->")[0]


def test_readme_training_loop_example_runs(one_thread, capsys):
    import re

    (example,) = re.findall(r"```python\n(.*?)```", readme_plan_section(), flags=re.S)
    namespace: dict = {}
    exec(compile(example, "docs/planning.md plan example", "exec"), namespace)
    driver, plan = namespace["driver"], namespace["plan"]
    assert driver.step == 12 and driver.kept == 64
    assert driver.layer_tokens == plan.random_ltd_layer_tokens  # the loop consumed what the plan said
    assert driver.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-4)  # the floor, reached at the end


def test_the_step_is_an_argument_and_the_schedule_a_function_of_it():
    schedule = MSLG(SEQ, 8, 8, every_steps=2)
    handle = FakeHandle()
    driver = Driver(handle, schedule, batch_size=BATCH, seq_len=SEQ)
    assert driver.before_step(5) == schedule(5) and handle.keep == schedule(5)
    assert driver.after_step() == BATCH * (len(DROP) * schedule(5) + (LAYERS - len(DROP)) * SEQ)
    assert driver.step == 6 and driver.before_step() == schedule(6)  # without an argument: the next step
    driver.after_step()
    assert driver.before_step(2) == schedule(2)  # the engine's clock rules (a resume, a skipped batch)


def test_nobody_writes_the_drivers_step():
    driver = Driver(FakeHandle(), ConstantKeep(SEQ, 8), batch_size=BATCH, seq_len=SEQ)
    with pytest.raises(AttributeError):
        driver.step = 3
    with pytest.raises(ConfigError, match="step"):
        driver.before_step(-1)


def test_restart_at_recomputes_the_counters_of_the_steps_before():
    schedule = MSLG(SEQ, 8, 8, every_steps=3)
    straight = Driver(FakeHandle(), schedule, batch_size=BATCH, seq_len=SEQ)
    train(straight, 7)
    restarted = Driver(FakeHandle(), schedule, batch_size=BATCH, seq_len=SEQ)
    restarted.restart_at(7)
    assert (restarted.step, restarted.layer_tokens, restarted.tokens) == (7, straight.layer_tokens, straight.tokens)


def test_rng_state_round_trips():
    saved = random_ltd.driver.rng_state()
    first = torch.rand(3)
    random_ltd.driver.restore_rng(saved)
    assert torch.equal(torch.rand(3), first)


def test_rng_state_round_trip_replays_dropout():
    from random_ltd.driver import restore_rng, rng_state

    state = rng_state()
    first = torch.nn.functional.dropout(torch.ones(100), 0.5)
    restore_rng(state)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(100), 0.5), first)
