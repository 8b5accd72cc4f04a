"""What a study leaves in its folder: `trials.csv` (one row per trial), `best_config.yaml` (which `loratune train
--config` runs as is), the best configuration and the defaults trained again and scored on the test split (`best/`,
`defaults/`), `tune.json`, and `tune.md` / `tune.html` with Optuna's plots (matplotlib, so the page works offline)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from loratune.config import Config
from loratune.progress import announce
from loratune.report.render import Figure, Figures, Heading, Table, Text, render_html, render_markdown
from loratune.runs import files
from loratune.tuning.space import trial_config

DPI = 110
BEST_DIR = "best"
DEFAULTS_DIR = "defaults"


def best_value(study: Any) -> float | None:
    """The best finished trial's value; None before any trial finished."""
    try:
        return study.best_value
    except ValueError:
        return None


def write_outputs(study: Any, cfg: Config, options: Any, seconds: float) -> dict[str, Any]:
    """Write the study's files into `options.output_dir`; -> the summary in `tune.json`."""
    out = options.output_dir
    rows = _write_trials(study, out / "trials.csv")
    summary: dict[str, Any] = {
        "metric": options.metric,
        "direction": study.direction.name.lower(),
        "trials": rows,
        "counts": {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL")},
        "seconds": round(seconds, 1),
    }
    best_score = best_value(study)
    if best_score is None:
        files.write_json(out / "tune.json", summary)
        return summary
    best = study.best_trial
    first = next((t for t in study.trials if t.number == 0), None)
    best_cfg = trial_config(cfg, best.params, out / BEST_DIR, "test")
    files.write_text(out / "best_config.yaml", best_cfg.to_yaml())
    summary["best"] = {"number": best.number, "params": best.params, "validation": best_score}
    summary["defaults"] = {"validation": first.value if first is not None else None}
    final = [("best", best_cfg)]
    if first is not None and first.number != best.number and first.state.name == "COMPLETE":
        final.append(("defaults", trial_config(cfg, first.params, out / DEFAULTS_DIR, "test")))
    from loratune.training.recipe import run

    for key, config in final:
        announce(f"training the {'best configuration' if key == 'best' else 'defaults'} again, scored on test")
        after = run(config).after
        summary[key]["test"] = {"accuracy": after.accuracy, "f1": after.f1, "loss": after.loss}
    if first is not None and first.number == best.number:
        summary["defaults"]["test"] = summary["best"]["test"]  # the defaults were the best
    files.write_json(out / "tune.json", summary)
    _write_pages(study, summary, out)
    return summary


def _write_trials(study: Any, path: Path) -> list[dict[str, Any]]:
    rows = []
    for trial in study.trials:
        values = trial.user_attrs.get("epoch_values", [])
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                **{f"param {k}": v for k, v in trial.params.items()},
                "epoch values": " ".join(f"{v:.4f}" for v in values),
                "seconds": trial.user_attrs.get("seconds"),
                "reason": trial.user_attrs.get("reason", ""),
            }
        )
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _write_pages(study: Any, summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    made = []
    for name, plot, caption in (
        ("tune_history.png", plots.plot_optimization_history, "Each trial's validation score, and the best so far"),
        ("tune_intermediate.png", plots.plot_intermediate_values, "Validation score per epoch (pruned trials stop)"),
        ("tune_parallel.png", plots.plot_parallel_coordinate, "Settings of each finished trial, by score"),
        ("tune_importance.png", plots.plot_param_importances, "How much each setting mattered (fANOVA)"),
    ):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials for this plot
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flatten()[0].figure
        figure.savefig(out / name, dpi=DPI, bbox_inches="tight")
        plt.close(figure)
        made.append(Figure(name, caption))
    best, defaults, metric = summary["best"], summary["defaults"], summary["metric"]
    counts = summary["counts"]
    rows = [
        ["validation " + metric, _fmt(defaults.get("validation")), _fmt(best["validation"])],
        *[
            [f"test {key}", _fmt(defaults.get("test", {}).get(key)), _fmt(best.get("test", {}).get(key))]
            for key in ("accuracy", "f1")
        ],
    ]
    blocks = [
        Text(
            f"{len(summary['trials'])} trials: {counts['COMPLETE']} finished, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed; each scored on the validation split, the test split read only for the two "
            f"configurations below. Best: trial {best['number']}."
        ),
        Heading("Best configuration against the defaults"),
        Table(["", "defaults (trial 0)", f"best (trial {best['number']})"], rows),
        Table(["setting", "best"], [[k, str(v)] for k, v in best["params"].items()], align="ll"),
        Heading("The study"),
        Figures(made),
    ]
    title = f"Tuning: {metric} on validation"
    files.write_text(out / "tune.md", render_markdown(title, blocks))
    files.write_text(out / "tune.html", render_html(title, blocks, out, "loratune tune", DPI))


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
