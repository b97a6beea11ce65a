"""Parameter files (params.yaml, params.smoke.yaml) and the project root."""
from __future__ import annotations

from pathlib import Path

import yaml


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding params.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml in {here} or any folder above it; run from the avguide project")


def load_params(path: str | Path) -> dict:
    """Read a parameter file; a relative path is taken from the project root."""
    path = Path(path)
    if not path.is_absolute():
        path = project_root() / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parameter file not found")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict) or "seed" not in params:
        raise ValueError(f"{path}: expected a mapping with at least a top-level 'seed'")
    return params


# ---------------------------------------------------------------- other profiles (params.vocaset.yaml, params.biwi.yaml)

def keys(params: dict, prefix: str = "") -> set[str]:
    """Every dotted key of a parameter tree."""
    return {prefix + k for k in params} | {x for k, v in params.items() if isinstance(v, dict) for x in keys(v, f"{prefix}{k}.")}


def outputs(params: dict, prefix: str = ""):
    """(dotted key, path) of every stage output a parameter tree names (keys `out` and `*_out`)."""
    for k, v in params.items():
        if isinstance(v, dict):
            yield from outputs(v, f"{prefix}{k}.")
        elif k == "out" or k.endswith("_out"):
            yield f"{prefix}{k}", v


def _paths_to_fill(params: dict) -> list[tuple[str, object]]:
    """(key, value) of the folders and files a profile reads from outside the project."""
    prep, src = params["prepare"], params["prepare"]["source"]
    need = []
    if src == "vocaset":
        one = "raw_dir" if prep["vocaset"].get("raw_dir") or not prep["vocaset"].get("processed_dir") else "processed_dir"
        need += [f"prepare.vocaset.{k}" for k in (one, "transcripts_dir", "regions_dir", "faces_path")]
    elif src == "biwi":
        need += [f"prepare.biwi.{k}" for k in ("processed_dir", "transcripts_dir", "faces_path")]
    if params["prepare_2d"]["source"] == "lrs3":
        need.append("prepare_2d.lrs3.root")
    own = params.get("pretrain_audio", {}).get("out")  # a stage's output exists only once that stage has run
    for animator in params["train"]["animators"]:
        audio = params["train"][animator].get("pretrained_audio")
        if audio and not (own and str(audio).startswith(own)):
            need.append(f"train.{animator}.pretrained_audio")

    def value(key):
        node = params
        for k in key.split("."):
            node = node[k]
        return node

    return [(k, value(k)) for k in need]


def check_profile(path: str | Path, reference: str | Path = "params.smoke.yaml") -> list[str]:
    """What stops the profile at `path` from running: keys that differ from the `reference` profile's (every
    profile has the same keys), an unknown source, and the outside folders it names that are unset or missing."""
    params, ref = load_params(path), load_params(reference)
    problems = [f"{path}: key {k} is not in {reference}" for k in sorted(keys(params) - keys(ref))]
    problems += [f"{path}: key {k} of {reference} is missing" for k in sorted(keys(ref) - keys(params))]
    if problems:
        return problems
    if params["prepare"]["source"] not in ("synthetic", "vocaset", "biwi"):
        problems.append(f"{path}: prepare.source is {params['prepare']['source']!r}; expected synthetic, vocaset or biwi")
    for key, value in _paths_to_fill(params):
        if not value:
            problems.append(f"{path}: {key} is not set; fill in the path")
        elif not Path(str(value)).exists():
            problems.append(f"{path}: {key} = {value}: no such file or folder")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m avguide.params check FILE`: exit 1 with one line per problem, else 0."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "check":
        print("usage: python -m avguide.params check PARAMS_FILE", file=sys.stderr)
        return 2
    try:
        problems = check_profile(args[1])
    except (FileNotFoundError, ValueError, yaml.YAMLError) as e:
        problems = [str(e)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{args[1]}: OK (the keys of every profile; every outside path it names exists)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
