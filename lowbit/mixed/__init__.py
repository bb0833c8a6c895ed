"""Mixed precision: per-layer sensitivity, a budgeted choice of format per layer, and its menu.

:func:`sensitivity` measures (or estimates) what each layer costs in each candidate format;
:func:`solve` picks one format per layer under a :class:`Budget`; the recipe
:class:`lowbit.recipes.MixedPrecision` does both, quantizes and verifies.
"""
from .candidates import DEFAULT_CANDIDATES, Candidate, parse_candidate, parse_candidates
from .sensitivity import PROXIES, Sensitivity, sensitivity
from .solve import Assignment, Budget, solve

__all__ = ["DEFAULT_CANDIDATES", "PROXIES", "Assignment", "Budget", "Candidate", "Sensitivity",
           "parse_candidate", "parse_candidates", "sensitivity", "solve"]
