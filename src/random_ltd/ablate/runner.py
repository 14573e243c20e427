"""Run one study end to end: train its arms, judge its claims, write its folder and its block of
the results page."""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from random_ltd.ablate import page, report, runs
from random_ltd.ablate.studies import STUDIES
from random_ltd.train.report import write_json
from random_ltd.train.rundir import pick_device


@dataclasses.dataclass(frozen=True)
class Options:
    """``seeds``: ``None`` gives each study its own fixed count (``Study.seeds``; 2 with ``quick``)."""

    root: Path
    results: Path
    quick: bool = False
    seeds: int | None = None
    seed: int = 0
    device: str = "auto"
    engine: str = "program"

    def __post_init__(self) -> None:
        if self.engine not in runs.ENGINES:
            raise ValueError(f"--engine: choose one of {', '.join(runs.ENGINES)}, got {self.engine!r}")
        bad_count = isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1
        if self.seeds is not None and bad_count:
            raise ValueError(f"--seeds: must be an integer >= 1, got {self.seeds!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed: must be an integer >= 0, got {self.seed!r}")

    def seeds_for(self, name: str) -> int:
        return self.seeds if self.seeds is not None else STUDIES[name].seeds_for(self.quick)

    def seed_counts(self) -> tuple[int, ...]:
        """Every number of seeds some study trains with: a run with more seeds serves one with fewer."""
        return tuple(sorted({self.seeds_for(name) for name in STUDIES}))

    def command(self, name: str) -> str:
        flags = [" --quick"] if self.quick else []
        if self.seeds_for(name) != STUDIES[name].seeds_for(self.quick):
            flags.append(f" --seeds {self.seeds}")
        if self.seed:
            flags.append(f" --seed {self.seed}")
        return f"random-ltd ablate {name}" + "".join(flags)


def run_study(name: str, options: Options, log: Callable[[str], None] = print) -> dict:
    study = STUDIES[name]
    arm_list, claims = study.build(options.quick)
    arm_list = [arm.for_engine(options.engine) for arm in arm_list]
    seeds, results = options.seeds_for(name), {}
    for number, arm in enumerate(arm_list, 1):
        started = time.perf_counter()
        results[arm.label] = runs.train(arm, options.root, seeds, options.seed, options.device, options.seed_counts())
        losses = ", ".join(f"{result['final_val_loss']:.4f}" for result in results[arm.label])
        log(f"[{name}] {number}/{len(arm_list)} {arm.label}: val loss {losses} ({time.perf_counter() - started:.0f} s)")
    arms = report.summarize_arms(results)
    judged = [report.judge_claim(claim, arms) for claim in claims]
    folder = options.root / name
    folder.mkdir(parents=True, exist_ok=True)
    report.plot(folder / "plot.png", study, arms)
    context = describe_scale(arm_list[0], options, arms)
    markdown = report.study_markdown(study, arms, judged, options.command(name), context)
    (folder / "table.md").write_text(markdown + f"\n![{name}](plot.png)\n")
    data = {"name": name, "command": options.command(name), "judged": judged,
            "arms": {label: {k: v for k, v in arm.items() if k != "curve_mean"} for label, arm in arms.items()}}
    counts = options.seed_counts()
    write_json(folder / "results.json", {**data, "arm_folders": {arm.label: str(arm.folder(
        options.root, runs.covering_count(arm, options.root, seeds, options.seed, counts) or seeds, options.seed))
        for arm in arm_list}})
    figure = copy_plot(folder / "plot.png", options.results, name)
    page.update(options.results, name, markdown + f"\n![{name}]({figure})\n",
                {"name": name, "command": options.command(name), "judged": judged})
    return data


def describe_scale(first: runs.Arm, options: Options, arms: dict[str, dict]) -> str:
    settings = dict(first.settings)
    shown = ", ".join(f"{key}={settings[key]}" for key in ("task", "model_size", "layers", "seq_len", "patch_size",
                                                          "batch_size", "steps", "vocab_size", "corpus_mb", "lr")
                      if key in settings)
    cpu_seconds = sum(sum(arm.get("cpu_s", [])) for arm in arms.values())
    seeds = next(iter(arms.values()))["seeds"]
    return (f"Scale: {shown}; {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}). Run {time.strftime('%Y-%m-%d')} on "
            f"{pick_device(options.device)} (torch {torch.__version__}, {torch.get_num_threads()} thread(s) per "
            f"process, {os.cpu_count()} cores); CPU time of all arms {cpu_seconds / 60:.1f} min; {load_text(arms)}")


def load_text(arms: dict[str, dict]) -> str:
    """The machine's load while the arms trained: wall-clock under it is not comparable between arms."""
    seen = [value for arm in arms.values() for value in arm.get("load_average", [])]
    if not seen:
        return "load average not recorded."
    return f"1-minute load average {min(seen):.1f}-{max(seen):.1f} at the arms' starts and ends."


def copy_plot(plot: Path, results: Path, name: str) -> str:
    """Copy the study's plot next to the results page (``results/<name>.png``); its link there."""
    target = results.parent / results.stem / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plot, target)
    return f"{results.stem}/{name}.png"
