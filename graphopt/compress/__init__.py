"""Compression under one accuracy budget: structured pruning, low-rank factorization and INT8 searched together
(``graphopt compress``, pipeline ``O3``).

- :mod:`.search`: the greedy walk over the techniques' levels, the Pareto frontier, the goal's best point.
- :mod:`.candidates`: building a candidate at given levels in the O3 order, sharing intermediate models.
- :mod:`.run`: :func:`compress`, the search with latency measured against the warm original and quality on the
  evaluation split, the chosen point checked on a held-out split.
"""

from graphopt.compress.candidates import TECHNIQUES, Built, CandidateBuilder, spec_of
from graphopt.compress.run import CompressOptions, CompressResult, compress
from graphopt.compress.search import Knob, Measure, SearchResult, best, pareto, search

__all__ = ["TECHNIQUES", "Built", "CandidateBuilder", "CompressOptions", "CompressResult", "Knob", "Measure",
           "SearchResult", "best", "compress", "pareto", "search", "spec_of"]
