"""Parameters: `params.yaml` is the default profile; `profiles/<name>.yaml` holds only what another profile changes.

One mechanism composes them: `load_params(profile=name)` (the tests and notebooks run on their own: the smoke
profile) and `python -m avguide.params compose NAME` (what `make reproduce PROFILE=NAME` runs: it writes the composed
parameters to params.yaml, the one file DVC reads, so the locks record the values that ran). An overlay may only set
keys the default has; a key it does not know is an error naming the key and the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

PROFILES = "profiles"
COMPOSED = "# profile: "  # first line of a composed params.yaml


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding params.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml in {here} or any folder above it; run from the avguide project")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameters")
    return data


def set_threads(params: dict) -> None:
    """torch's CPU threads := params' `threads`, the number every stage computes with: the floats of a training run
    depend on it (the order of its sums), so it is a parameter, not the machine's core count."""
    import torch

    torch.set_num_threads(int(params["threads"]))


def profile_path(name: str, root: Path | None = None) -> Path:
    """profiles/<name>.yaml of the project; an unknown name is an error listing the known ones."""
    folder = (root or project_root()) / PROFILES
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no profile {name!r}; known profiles: {', '.join(known)}")
    return path


def overlay(base: dict, changes: dict, source: str | Path, prefix: str = "") -> dict:
    """`base` with `changes` written over it, key by key; a key `base` lacks, or a section replaced by a value
    (or a value by a section), is an error naming the key and `source`."""
    out = dict(base)
    for key, value in changes.items():
        name = prefix + str(key)
        if key not in base:
            raise ValueError(f"{source}: unknown key {name} (not in the default params.yaml)")
        if isinstance(base[key], dict) != isinstance(value, dict) and base[key] is not None:
            kind = "a section" if isinstance(base[key], dict) else "a value"
            raise ValueError(f"{source}: key {name} is {kind} in params.yaml, but not in the profile")
        out[key] = overlay(base[key], value, source, name + ".") if isinstance(value, dict) else value
    return out


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> dict:
    """The parameters of `path` (relative paths from the project root), with the overlay of `profile` if given."""
    root = project_root()
    path = Path(path) if Path(path).is_absolute() else root / path
    params = _read(path)
    if profile:
        overlay_file = profile_path(profile, root)
        params = overlay(params, _read(overlay_file), overlay_file)
    if "seed" not in params:
        raise ValueError(f"{path}: expected a top-level 'seed'")
    return params


def compose(name: str, root: Path | None = None) -> Path:
    """Write params.yaml = the default + profiles/<name>.yaml; the default again for name 'default'.

    A params.yaml already composed from another profile is an error: `git checkout params.yaml` first."""
    root = root or project_root()
    target = root / "params.yaml"
    first = target.read_text().split("\n", 1)[0]
    if first.startswith(COMPOSED):
        current = first[len(COMPOSED) :].split()[0]
        if current != name:
            raise ValueError(
                f"{target}: composed from profile {current!r} already; `git checkout params.yaml` restores the "
                f"default before composing {name!r}"
            )
    if name == "default":
        if first.startswith(COMPOSED):
            raise ValueError(f"{target}: composed from profile {current!r}; `git checkout params.yaml` restores it")
        return target
    params = load_params(target, name)
    header = (
        f"{COMPOSED}{name}  (written by `python -m avguide.params compose {name}`: the default params.yaml with "
        f"{PROFILES}/{name}.yaml over it; `git checkout params.yaml` restores the default)\n"
    )
    target.write_text(header + yaml.safe_dump(params, sort_keys=False, width=120))
    return target


def keys(params: dict, prefix: str = "") -> set[str]:
    """Every dotted key of a parameter tree."""
    own = {prefix + k for k in params}
    return own | {x for k, v in params.items() if isinstance(v, dict) for x in keys(v, f"{prefix}{k}.")}


def outputs(params: dict, prefix: str = ""):
    """(dotted key, path) of every stage output a parameter tree names (keys `out` and `*_out`)."""
    for k, v in params.items():
        if isinstance(v, dict):
            yield from outputs(v, f"{prefix}{k}.")
        elif k == "out" or k.endswith("_out"):
            yield f"{prefix}{k}", v


def _value(params: dict, key: str):
    node = params
    for k in key.split("."):
        node = node[k]
    return node


def _paths_to_fill(params: dict) -> list[str]:
    """Keys of the folders and files a profile reads from outside the project."""
    prep, src = params["prepare"], params["prepare"]["source"]
    need = []
    if src == "vocaset":
        vocaset = prep["vocaset"]
        one = "raw_dir" if vocaset["raw_dir"] or not vocaset["processed_dir"] else "processed_dir"
        need += [f"prepare.vocaset.{k}" for k in (one, "transcripts_dir", "regions_dir", "faces_path")]
    elif src == "biwi":
        need += [f"prepare.biwi.{k}" for k in ("processed_dir", "transcripts_dir", "faces_path")]
    if params["prepare_2d"]["source"] == "lrs3":
        need.append("prepare_2d.lrs3.root")
    own = params["pretrain_audio"]["out"]  # a stage's output exists only once that stage has run
    for animator in params["train"]["animators"]:
        audio = params["train"][animator]["pretrained_audio"]
        if audio and not str(audio).startswith(own):
            need.append(f"train.{animator}.pretrained_audio")
    return need


def check(params: dict, source: str | Path) -> list[str]:
    """What stops these parameters from running: an unknown source, the outside folders they name unset or missing."""
    problems = []
    if params["prepare"]["source"] not in ("synthetic", "vocaset", "biwi"):
        problems.append(
            f"{source}: prepare.source is {params['prepare']['source']!r}; expected synthetic, vocaset or biwi"
        )
    for key in _paths_to_fill(params):
        value = _value(params, key)
        if not value:
            problems.append(f"{source}: {key} is not set; fill in the path")
        elif not Path(str(value)).exists():
            problems.append(f"{source}: {key} = {value}: no such file or folder")
    return problems


USAGE = """usage:
  python -m avguide.params compose NAME   params.yaml := the default + profiles/NAME.yaml (checked first)
  python -m avguide.params check [NAME]    what stops params.yaml (or it with profile NAME) from running"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("compose", "check") or len(args) > 2 or (args[0] == "compose" and len(args) != 2):
        print(USAGE, file=sys.stderr)
        return 2
    name = args[1] if len(args) == 2 and args[1] != "default" else None
    try:
        source = profile_path(name) if name else project_root() / "params.yaml"
        problems = check(load_params(profile=name), source)
        if not problems and args[0] == "compose":
            print(f"{compose(args[1])}: profile {args[1]}")
    except (FileNotFoundError, ValueError) as e:
        problems = [str(e)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems and args[0] == "check":
        print(f"{source}: OK (every key known; every outside path it names exists)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
