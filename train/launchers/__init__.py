"""What launches training runs: sweeps, and training steps under the profiler (for the benchmark).

These modules sit above ``train`` and ``evaluation``: each runs ``train/finetune.py``
(sweeps as its own process, reading back what the run wrote; ``profile_steps`` in its own
process under torch.profiler) and is itself started as a process. Nothing in the project
imports them.
"""
