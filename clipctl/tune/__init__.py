"""`clipctl tune`: the report's three tuning phases as resumable, shareable studies.

Modules: `space` (TOML search spaces), `optimizer` (the only scikit-optimize user), `store` (study folder
and journal), `phases` (plans and hand-over), `session` (journal replay and decisions), `runner` (trial
subprocesses, pruning), `estimate` (dry run), `importance` and `plots` (analysis).
"""
