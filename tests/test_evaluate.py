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


def test_eval_judges_replaces_a_judge_with_the_folder_given(tmp_path):
    """eval.judges: a reader folder (e.g. a converted auto-AVSR visual-only reader) judges instead of
    pretrain_judge's; an unknown judge name is an error; `avguide transcribe --model-dir` takes such a folder too."""
    import pytest

    from avguide.evaluate import judge_folders
    from avguide.reading import reader_folder

    params = {"pretrain_expert": {"out": "data/models/expert", "judge": {}, "judge2": {}}, "eval": {}}
    readers = project_root() / "data" / "models" / "expert"
    assert judge_folders(params) == [readers / "judge", readers / "judge2"]
    params["eval"]["judges"] = {"judge": str(tmp_path / "vsr"), "judge2": None}
    assert judge_folders(params) == [tmp_path / "vsr", readers / "judge2"]
    params["eval"]["judges"] = {"judge3": "x"}
    with pytest.raises(ValueError, match=r"eval.judges: \['judge3'\] are not judges"):
        judge_folders(params)
    (tmp_path / "vsr").mkdir()
    (tmp_path / "vsr" / "config.json").write_text("{}")
    assert reader_folder(tmp_path / "vsr", audio=False) == tmp_path / "vsr"
