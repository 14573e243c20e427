"""``random-ltd ablate``: the paper's ablations (Section 5) with several seeds, and a results page.

    from random_ltd.ablate import Options, run_study
    run_study("layers", Options(root=Path("runs/ablate"), results=Path("docs/results.md")))

``studies`` says what each study trains and claims; ``runs`` trains an arm with the training
program (``methods``: TokenBypass and protected special tokens on its loop); ``verdict`` turns per-seed
numbers into a verdict; ``report`` and ``page`` write the tables, plots and the results page.
"""
from random_ltd.ablate.runner import Options, run_study
from random_ltd.ablate.studies import STUDIES, Claim, Study

__all__ = ["STUDIES", "Claim", "Options", "Study", "run_study"]
