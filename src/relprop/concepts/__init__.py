"""Concepts: which units of a layer carry a prediction, and what each of them looks for.

Concept Relevance Propagation (CRP) and Relevance Maximization (RelMax) of Achtibat et al.
(*Nature Machine Intelligence* 5, 2023) on relprop's engine:

>>> from relprop import concepts
>>> c = concepts.explain(model, x, target=y, layer="layer3", units=[12, 40, 7])  # doctest: +SKIP
>>> c.relevance.shape   # (B, 3, *x.shape[1:])                                   # doctest: +SKIP
"""

from ..errors import InvalidInputError
from . import figures
from ._errors import LayerNotOnPathError, UnitIndexError, UnknownLayerError
from .explain import ConceptExplanation, explain
from .ranking import ConceptGraph, GraphEdge, UnitRanking, composition, top_units
from .relmax import References, references

__all__ = ["figures", "explain", "ConceptExplanation", "top_units", "UnitRanking", "composition",
           "ConceptGraph", "GraphEdge", "references", "References", "LayerNotOnPathError",
           "UnitIndexError", "UnknownLayerError", "InvalidInputError"]
