"""The tuned statements, one module per aggregate.

Statements cost more to build than to run, so the hot ones are built once
(module constants or ``functools.cache``) with bound parameters, and loaded
copies are kept in step by hand (``set_committed_value``) instead of through
the ORM's unit of work. The rule modules (``api``, ``jobs``, ``quota``,
``operations``) call these by name and read as the rules they are.
"""
