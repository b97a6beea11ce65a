"""Each stage's inputs, built on demand when missing, so a notebook also runs on its own (as the tests run the
notebooks on the smoke profile). Under `dvc repro` everything is there already and nothing is rebuilt."""

from __future__ import annotations

from avguide.params import project_root


def require(params: dict, need: str, progress: bool = False) -> None:
    """Make sure `need` exists, building it (and what it needs) otherwise:
    corpus | corpus_2d | audio | expert | judges | expert_3d | critic | baseline:<animator> |
    guided:<animator>:<loss>:<seed>."""
    from avguide.data.prepare import prepare, prepare_2d
    from avguide.training.audio import pretrain_audio
    from avguide.training.critic import pretrain_critic
    from avguide.training.expert import judges, pretrain_expert, pretrain_judge
    from avguide.training.guide import finetune_expert, guide_animator, run_name
    from avguide.training.run import train_animator

    root, kind, *args = project_root(), *need.split(":")
    models = root / params["train"]["out"]
    if kind == "corpus":
        if not (root / params["prepare"]["out"] / "manifest.csv").exists():
            prepare(params, progress)
    elif kind == "corpus_2d":
        if not (root / params["prepare_2d"]["out"] / "manifest.csv").exists():
            prepare_2d(params, progress)
    elif kind == "audio":
        if not (root / params["pretrain_audio"]["out"] / "model" / "config.json").exists():
            require(params, "corpus_2d", progress)
            pretrain_audio(params, progress)
    elif kind == "expert":
        if not (root / params["pretrain_expert"]["out"] / "model" / "config.json").exists():
            require(params, "corpus_2d", progress)
            pretrain_expert(params, progress)
    elif kind == "judges":
        readers = root / params["pretrain_expert"]["out"]
        for name in judges(params["pretrain_expert"]):
            if not (readers / name / "config.json").exists():
                require(params, "corpus", progress)
                require(params, "corpus_2d", progress)
                pretrain_judge(params, name, progress)
    elif kind == "expert_3d":
        if not (root / params["guide"]["expert_out"] / "model" / "config.json").exists():
            require(params, "expert", progress)
            finetune_expert(params, progress)
    elif kind == "critic":
        if not (root / params["pretrain_critic"]["out"] / "model" / "config.json").exists():
            require(params, "corpus", progress)
            pretrain_critic(params, progress)
    elif kind == "baseline":
        if not (models / args[0] / "model" / "config.json").exists():
            require(params, "corpus", progress)
            if params["train"][args[0]].get("pretrained_audio") == f"{params['pretrain_audio']['out']}/model":
                require(params, "audio", progress)
            train_animator(params, args[0], progress)
    elif kind == "guided":
        animator, loss, seed = args[0], args[1], int(args[2])
        if not (models / run_name(animator, loss, seed) / "model" / "config.json").exists():
            require(params, f"baseline:{animator}", progress)
            for need in guide_needs(params, loss):
                require(params, need, progress)
            guide_animator(params, animator, loss, seed, progress)
    else:
        raise ValueError(f"unknown requirement {need!r}")


def guide_needs(params: dict, loss: str) -> list[str]:
    """What guided training with loss setting `loss` reads besides the baseline: the fine-tuned expert (the reader
    and feature terms), the critic (the critic term)."""
    term = params["guide"]["weights"][loss].get("term")
    return {"reader": ["expert_3d"], "feature": ["expert_3d"], "critic": ["critic"]}.get(term, [])


def require_all(params: dict, progress: bool = False) -> None:
    """Every model the evaluate stage scores, and its judges."""
    require(params, "judges", progress)
    for animator in params["train"]["animators"]:
        require(params, f"baseline:{animator}", progress)
        for loss in params["guide"]["losses"]:
            for seed in params["guide"]["seeds"]:
                require(params, f"guided:{animator}:{loss}:{seed}", progress)
