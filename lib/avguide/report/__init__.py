"""The evaluation report: figures, videos and the README's results block, from what the evaluate stage wrote.

Tables come from `<eval.out>/per_utterance.csv` (one row per model, seed and test utterance); figures are
seaborn/matplotlib figures that `save` writes as PNG under `<eval.out>/figures/`; videos are MP4s with the
utterance's sound under `<eval.out>/videos/`. Notebook 04 calls these functions in order and shows the
results; `python -m avguide.report readme` rewrites README.md's results block from `metrics.json`.

Modules: `stats` (per-utterance tables, pooled metrics, error bars, paired differences, metrics files, viseme
confusion), `figures` (every figure and what it draws from), `videos` (predictions of a few test utterances,
side-by-side videos), `readme` (provenance, the README blocks and the `readme` command). Their public names
are all here, as `report.<name>`.
"""

from avguide.metrics import GAP, align
from avguide.models.registry import ANIMATORS
from avguide.report.figures import (
    BOUNDS,
    key_frames,
    line_style,
    lip_alike_features,
    lip_aperture,
    model_colours,
    mouth_crops,
    nearest_neighbour_accuracy,
    plot_aperture,
    plot_confusions,
    plot_curves,
    plot_diagnostics,
    plot_metrics,
    plot_pareto,
    plot_strips,
    plot_subjects,
    plot_tsne,
    save,
    shade_phonemes,
    training_curves,
    tsne,
    word_features,
    word_spans,
    word_visemes,
)
from avguide.report.readme import (
    BLOCKS,
    END,
    FIGURES,
    START,
    git_commit,
    machine,
    main,
    markers,
    provenance,
    readme_block,
    results_table,
    study_block,
    update_readme,
)
from avguide.report.stats import (
    PAIRED,
    UNITS,
    error_bars,
    paired_differences,
    paired_table,
    per_utterance,
    seed_metrics,
    subject_metrics,
    viseme_confusion,
    write_table,
)
from avguide.report.videos import comparison_videos, pick_utterances, predict_utterances
from avguide.scoring import METRICS, pooled

__all__ = [
    "ANIMATORS",
    "BLOCKS",
    "BOUNDS",
    "END",
    "FIGURES",
    "GAP",
    "METRICS",
    "PAIRED",
    "START",
    "UNITS",
    "align",
    "comparison_videos",
    "error_bars",
    "git_commit",
    "key_frames",
    "line_style",
    "lip_alike_features",
    "lip_aperture",
    "machine",
    "main",
    "markers",
    "model_colours",
    "mouth_crops",
    "nearest_neighbour_accuracy",
    "paired_differences",
    "paired_table",
    "per_utterance",
    "pick_utterances",
    "plot_aperture",
    "plot_confusions",
    "plot_curves",
    "plot_diagnostics",
    "plot_metrics",
    "plot_pareto",
    "plot_strips",
    "plot_subjects",
    "plot_tsne",
    "pooled",
    "predict_utterances",
    "provenance",
    "readme_block",
    "study_block",
    "results_table",
    "save",
    "seed_metrics",
    "shade_phonemes",
    "subject_metrics",
    "training_curves",
    "tsne",
    "update_readme",
    "viseme_confusion",
    "word_features",
    "word_spans",
    "word_visemes",
    "write_table",
]
