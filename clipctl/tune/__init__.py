"""`clipctl tune`: the report's three tuning phases as resumable, shareable studies.

Modules: `recipe` (the tune recipe schema and loading; phases are the files recipes/tune/phaseN.toml),
`space` (TOML search spaces), `strategies` (gp, grid, random; the only scikit-optimize user), `store` (study
folder and journal), `phases` (plans and hand-over), `session` (journal replay and decisions), `runner`
(trial subprocesses, pruning), `status` (status, best trial and its export, as data), `estimate` (dry
run), `importance` and `plots` (analysis).
"""
