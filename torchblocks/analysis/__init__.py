"""Parameter and FLOP analysis: fvcore counts, closed-form formulas, standard-conv counterparts.

Convention: fvcore counts one fused multiply-add as one "flop"; here that figure is called MACs
and ``flops = 2 * macs``. The cost of each op is listed in :mod:`torchblocks.analysis.handlers`;
``count(..., meta=True)`` gives the same counts on the meta device (:mod:`torchblocks.analysis.meta`).
"""
from . import formulas
from .comparison import Comparison, compare
from .counterpart import standard_counterpart
from .counting import CountReport, count, measure_latency
from .folding import FoldingSavings, folding_savings
from .meta import MetaCountError
from .summary import Summary, SummaryRow, summary

__all__ = [
    "Comparison",
    "CountReport",
    "FoldingSavings",
    "MetaCountError",
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
