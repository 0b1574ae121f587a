"""`ablation sweep` on Ray: the driver (sweep), which trial starts next (launch), the console and log
(progress, console), cluster preflight (nodes) and the Tune trainable that runs one trial (trainable).
"""
