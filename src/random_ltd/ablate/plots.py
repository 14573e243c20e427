"""The forest plot at the top of the results page: every claim's difference and its 95% interval
against the claim's own tolerance, coloured by verdict.

Claims measure different things (validation loss, its rise above the minimum, accuracy), so each
is drawn in units of its tolerance: x = (A − B) / tol, with the sign flipped for higher-is-better
metrics, so that left of zero always means "A did better". The shaded band is ±1 tolerance.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from random_ltd.ablate import verdict

COLOURS = {verdict.REPRODUCED: "tab:green", verdict.NOT_REPRODUCED: "tab:red", verdict.INCONCLUSIVE: "tab:gray"}


def scaled(item: dict) -> tuple[float, float]:
    """A claim's difference and half-width in units of its tolerance, oriented lower-is-better."""
    sign = -1.0 if item.get("higher_is_better") else 1.0
    return sign * item["difference"] / item["tolerance"], item["half_width"] / item["tolerance"]


def row_label(study: str, item: dict, width: int = 80) -> str:
    """The claim on at most two lines (claims of one study often differ only near the end)."""
    lines = textwrap.wrap(f"{item['section']} {study}: {item['claim']}", width)
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), width, placeholder=" …")]
    return "\n".join(lines)


def forest(path: Path, rows: list[tuple[str, dict]]) -> None:
    """``rows``: ``(study name, judged claim)`` in page order, drawn top to bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    figure, axes = plt.subplots(figsize=(14, 0.42 * len(rows) + 1.6))
    axes.axvspan(-1, 1, color="tab:blue", alpha=0.12, linewidth=0)
    axes.axvline(0, color="black", linewidth=0.8)
    for position, (_, item) in enumerate(rows):
        centre, half = scaled(item)
        colour = COLOURS.get(item["verdict"], "black")
        if math.isfinite(half):
            axes.errorbar(centre, position, xerr=half, fmt="o", color=colour, capsize=3, markersize=4)
        else:
            axes.plot(centre, position, "x", color=colour)
    axes.set_yticks(range(len(rows)), [row_label(study, item) for study, item in rows], fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("symlog", linthresh=2)
    ticks = [-100, -10, -2, -1, 0, 1, 2, 10, 100]
    axes.set_xticks(ticks, [str(tick) for tick in ticks])
    axes.set_xlabel("(A − B) / tolerance, 95% interval (accuracy: B − A); left of 0: A better\n"
                    "band: ±1 tolerance; linear within ±2, logarithmic beyond")
    axes.legend(handles=[Patch(color=colour, label=name) for name, colour in COLOURS.items()] +
                [Patch(color="tab:blue", alpha=0.12, label="±1 tolerance")], fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # tight_layout alone clipped the long claim labels
    plt.close(figure)
