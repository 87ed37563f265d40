"""What launches training runs: sweeps and the training benchmark.

These modules sit above ``train`` and ``evaluation``: each starts ``train/finetune.py``
as its own process and reads back what the run wrote. Nothing in the project imports
them.
"""
