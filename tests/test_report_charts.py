"""The pictures: a training run's curves and the results chart, checked panel by panel
against the records they are drawn from."""

from __future__ import annotations

from evaluation.report import plot_bar_chart, plot_training, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_training_curves_one_panel_per_quantity_with_the_last_value_of_a_repeated_step(tmp_path):
    records = [
        {"step": 0, "dev/ndcg@10": 0.25, "dev/mrr@10": 0.125},
        {"step": 1, "train/loss": 2.0, "train/lr": 1e-4, "train/grad_norm": 3.0},
        {"step": 2, "train/loss": 1.5, "train/lr": 2e-4, "train/grad_norm": 2.0, "train/tokens_per_s": 9.0},
        # A resumed run logs step 2 again (its checkpoint was at step 1): the later value counts.
        {"step": 2, "train/loss": 1.25, "train/lr": 2e-4, "train/grad_norm": 2.5},
        {"step": 3, "train/loss": 1.0, "train/lr": 1e-4, "train/grad_norm": 1.0},
        {"step": 3, "dev/ndcg@10": 0.5, "dev/mrr@10": 0.375, "eval/toy/S1": 0.75},
    ]
    figure = plot_training(records, tmp_path / "training.png", title="run")
    assert (tmp_path / "training.png").read_bytes()[:8] == PNG_SIGNATURE
    assert [axes.get_ylabel() for axes in figure.axes] == ["loss", "learning rate", "gradient norm (before clipping)",
                                                            "dev score"]
    assert all(axes.get_xlabel() == "step" for axes in figure.axes)
    curves = [{line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
              for axes in figure.axes]
    assert curves == [
        {"train/loss": ([1, 2, 3], [2.0, 1.25, 1.0])},
        {"train/lr": ([1, 2, 3], [1e-4, 2e-4, 1e-4])},
        {"train/grad_norm": ([1, 2, 3], [3.0, 2.5, 1.0])},
        {"ndcg@10": ([0, 3], [0.25, 0.5]), "mrr@10": ([0, 3], [0.125, 0.375])},
    ]
    assert [text.get_text() for text in figure.axes[3].get_legend().get_texts()] == ["ndcg@10", "mrr@10"]


def test_training_curves_leave_out_what_the_log_lacks(tmp_path):
    # No clipping (no grad norm) and no dev set: two panels.
    records = [{"step": step, "train/loss": 1.0 / step, "train/lr": 1e-3} for step in (1, 2)]
    figure = plot_training(records, tmp_path / "training.png")
    assert [axes.get_ylabel() for axes in figure.axes] == ["loss", "learning rate"]


def test_results_chart_one_panel_per_task_family_one_row_per_label(tmp_path):
    def record(label, task, family, metrics, main):
        return {"label": label, "task": task, "task_type": family, "metrics": metrics, "main_metrics": main}

    records = [
        record("echo/mean", "wordnet", "retrieval", {"ndcg@10": 0.5, "mrr@10": 0.25}, ["ndcg@10"]),
        record("echo/mean", "sts-bible", "sts", {"spearman": 0.75}, ["spearman"]),
        record("echo/mean", "scifact", "retrieval", {"ndcg@10": 0.125}, ["ndcg@10"]),
        record("echo/mean", "toy", "toy", {"S1": 0.625, "S2": 0.875}, ["S1", "S2"]),
        record("classical/last", "wordnet", "retrieval", {"ndcg@10": 0.375}, ["ndcg@10"]),
        record("classical/last", "sts-bible", "sts", {"spearman": 0.5}, ["spearman"]),
        # classical/last has no scifact or toy score: those bars are missing and marked "–".
    ]
    paths = write_report(records, tmp_path, "title", label_name="template set/pooling")
    assert paths["png"].read_bytes()[:8] == PNG_SIGNATURE
    figure = plot_bar_chart(records, tmp_path / "chart.png", "title", label_name="template set/pooling")
    assert [axes.get_legend().get_title().get_text() for axes in figure.axes] == ["retrieval", "sts", "toy"]
    assert [axes.get_xlabel() for axes in figure.axes] == ["ndcg@10", "spearman", "S1, S2"]
    assert figure.axes[0].get_ylabel() == "template set/pooling"
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["echo/mean", "classical/last"]
    # Each panel: one bar series per (task, main metric), one bar per label, widths the scores (None: missing).
    for axes, expected in zip(figure.axes, [
        {"wordnet · ndcg@10": [0.5, 0.375], "scifact · ndcg@10": [0.125, None]},
        {"sts-bible · spearman": [0.75, 0.5]},
        {"toy · S1": [0.625, None], "toy · S2": [0.875, None]},
    ]):
        assert {container.get_label(): [bar.get_width() for bar in container] for container in axes.containers} == {
            name: [score or 0.0 for score in scores] for name, scores in expected.items()}
        assert [text.get_text() for text in axes.texts] == [
            "–" if score is None else f"{score:.3f}" for scores in expected.values() for score in scores]


def test_records_without_a_family_get_a_panel_per_task(tmp_path):
    records = [{"label": "a", "task": "t1", "metrics": {"m": 0.5}}, {"label": "a", "task": "t2", "metrics": {"m": 0.25}}]
    figure = plot_bar_chart(records, tmp_path / "chart.png")
    assert [axes.get_legend().get_title().get_text() for axes in figure.axes] == ["t1", "t2"]
