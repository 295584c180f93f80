"""Recruitment: recruiters rent hosts for batches, within their limits and budgets.

policy.py decides (a pure function: no Flask, database, clock or provider); reconciler.py
observes the database and the providers and carries the decision out; recruiters.py holds the
recruiters as users state them, ledger.py the rented hosts and what they cost, preview.py the
plan shown to users (`scitq recruiter plan`)."""
