"""Evaluating embedding models: metrics, local tasks, the toy S1/S2 diagnostic, reports, MTEB.

- :mod:`evaluation.metrics` — ranking, correlation, classification and clustering metrics (numpy);
- :mod:`evaluation.tasks` — read a task folder and score an encoder on it (:func:`evaluate_task`);
- :mod:`evaluation.toy` — the paper's toy experiment (``python -m evaluation.toy``);
- :mod:`evaluation.run` — every (mode, pooling) on local tasks (``python -m evaluation.run``);
- :mod:`evaluation.report` — Markdown table, bar chart and JSON of result records;
- :mod:`evaluation.mteb_adapter` — any mteb task or benchmark (needs the ``mteb`` extra).
"""
