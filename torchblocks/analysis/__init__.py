"""Parameter and FLOP analysis: fvcore counts, closed-form formulas, standard-conv counterparts.

Convention (DESIGN.md, "FLOP convention"): fvcore counts one fused multiply-add as one "flop";
here that figure is called MACs and ``flops = 2 * macs``. The cost of each op is listed in
:mod:`torchblocks.analysis.handlers`.
"""
from . import formulas
from .counterpart import Comparison, compare, standard_counterpart
from .counting import CountReport, count, measure_latency
from .folding import FoldingSavings, folding_savings
from .summary import Summary, SummaryRow, summary

__all__ = [
    "Comparison",
    "CountReport",
    "FoldingSavings",
    "Summary",
    "SummaryRow",
    "compare",
    "count",
    "folding_savings",
    "formulas",
    "measure_latency",
    "standard_counterpart",
    "summary",
]
