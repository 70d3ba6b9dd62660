"""Restore as a list of steps (``steps``): the options (``options``), the plan, pure
(``plan``), the target's checks (``target``), --create's database (``create``), the schema
(``schema``), the rows (``load``, ``stage``), the finish (``finish``), the result
(``result``)."""
