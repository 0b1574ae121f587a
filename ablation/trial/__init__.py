"""One trial's training, the same from `ablation train` and from a Ray worker: its config (config), data
(sources, data), model (models), loop (train), checkpoints (checkpoint) and run directory (rundir); bench
measures its throughput. Imports torch (lazily where the CLI must stay fast); never Ray.
"""
