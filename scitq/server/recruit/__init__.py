"""Recruitment: recruiters rent hosts for batches, within their limits and budgets."""
