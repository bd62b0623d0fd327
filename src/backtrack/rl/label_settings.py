"""How counterfactual restart labels are made (:class:`LabelSettings`, ``backtrack label``).

A module of its own, importing neither torch nor gymnasium, so that the command line builds
``label``'s flags from these declarations and ``--help`` stays fast; the labelling itself is
:mod:`backtrack.rl.counterfactual`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtrack.flags import option


@dataclass(frozen=True)
class LabelSettings:
    """Where a failing sample is resampled, how often, and what makes a deletion label (see
    :mod:`backtrack.rl.counterfactual`)."""

    positions: int = option(4, "Candidate steps per failing sample.")
    restarts: int = option(2, "Resamples per candidate step.")
    min_pass_rate: float = option(0.5, "Restart pass rate that makes a step a deletion label.")
    batch_size: int = option(16, "Rows decoded together.")

    def __post_init__(self) -> None:
        if min(self.positions, self.restarts, self.batch_size) < 1:
            raise ValueError("positions, restarts and batch_size must be >= 1")
        if not 0.0 < self.min_pass_rate <= 1.0:
            raise ValueError(f"min_pass_rate must be in (0, 1], got {self.min_pass_rate}")
