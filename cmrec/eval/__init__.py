"""Evaluation: metrics and the heuristic floors every model must beat."""
