"""A study from its spec to its records, without Ray: the spec's trials (spec), tune blocks (tuning),
trial states (trial_states), the study directory's records (records), `ablation status` (status) and
`ablation export` (export).
"""
