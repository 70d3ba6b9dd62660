"""Restore as a list of steps: the plan, the target's checks, the schema, the data's load and
the finish."""
