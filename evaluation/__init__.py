"""Evaluating embedding models: metrics, local tasks, the toy S1/S2 diagnostic, reports, MTEB.

- :mod:`evaluation.metrics` — similarity, ranking, correlation, classification and clustering metrics (numpy);
- :mod:`evaluation.tasks` — read a task folder and score an encoder on it (:func:`evaluate_task`);
- :mod:`evaluation.run` — every (template set, pooling) on local tasks (``python -m evaluation.run``);
- :mod:`evaluation.toy` — the paper's toy experiment table (``python -m evaluation.toy``); its
  sentences and task folder live in :mod:`data.sources.toy` and :mod:`data.toy`;
- :mod:`evaluation.report` — Markdown table, bar chart and JSON of result records;
- :mod:`evaluation.mteb_adapter` — any mteb task or benchmark (needs the ``mteb`` extra);
- :mod:`evaluation.cli` — what the command lines share: comma-separated lists, renamed flags;
- :mod:`evaluation.bench` — this project against sentence-transformers: training, memory, encoding
  (``python -m evaluation.bench``); its pieces live in :mod:`evaluation.benchmarks`.
"""
