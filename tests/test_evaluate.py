"""The evaluate stage scores the same figures whether one process or several score the models."""

from avguide.evaluate import evaluate
from avguide.params import load_params, project_root
from avguide.pipeline import require_all


def test_the_figures_do_not_depend_on_how_many_processes_score_them():
    params = load_params(profile="smoke")
    require_all(params)
    outs = {}
    for workers in (1, 2):
        out = f"{params['eval']['out']}-workers{workers}"
        results = evaluate({**params, "eval": {**params["eval"], "workers": workers, "out": out}}, progress=False)
        assert {"ground_truth", "static_template", "faceformer-baseline", "codetalker-avguide"} <= set(results)
        outs[workers] = [(project_root() / out / name).read_bytes() for name in ("metrics.json", "per_utterance.csv")]
    assert outs[1] == outs[2]
