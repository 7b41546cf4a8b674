"""Search: turn the model's next-token probabilities into translations."""

from nmt.search.beam import beam_search
from nmt.search.greedy import greedy_search
from nmt.search.hypothesis import Hypothesis, length_penalty

__all__ = ["Hypothesis", "beam_search", "greedy_search", "length_penalty"]
