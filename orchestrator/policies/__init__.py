"""Backup policies: schedules, grandfather-father-son retention and prune.

``schedule`` computes due times (cron in a time zone, or a fixed interval),
``retention`` is the pure keep/delete decision, ``service`` holds the rules
of the policy resource, the run (through ``api.create_backup``), the prune
(through ``api.delete_backup``) and the scheduler's tick. docs/policies.md
describes the semantics users rely on.
"""
