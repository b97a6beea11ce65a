"""The expert's training step with its visual stem as the Conv3d it is defined as (`stem.weight` applied to the
whole padded clip, then the valid frames taken) against `VisualFrontEnd._stem` (the valid frames only, as one 2D
convolution over each frame's stacked neighbours): the same sums, so any difference is speed. Prints one JSON line.

A step = augmentation + the joint CTC/attention loss + backward + AdamW step, on one batch of params.yaml
pretrain_expert.batch_size clips drawn (with `--seed`) from the 2D corpus' training split, the AV expert of
params.yaml sizes, fresh weights (weights do not change the cost). The two versions alternate step by step in one
process, so the machine's load drifts through both alike; medians over `--repeats` after two warm-up steps each.
`stem_*_s` time the stem alone (forward + backward of its output, on the same batch).

To see both cores busy, as when `make reproduce` trains the expert and a judge side by side, run two copies at once.

Usage: python benchmarks/expert_step.py [--threads 1] [--repeats 9] [--seed 0] [--params params.yaml]
"""

import argparse
import json
import statistics
import time

import torch

from avguide.data.avcorpus import AVCorpus
from avguide.data.avdataset import AVDataset, collate_av, decode_corpus
from avguide.models.augment import AugmentConfig, augment_av
from avguide.models.expert import Expert
from avguide.params import load_params, project_root
from avguide.training.expert import reader_config


def conv3d_stem(front):
    def stem(x, valid):
        return front.stem(x[:, None]).transpose(1, 2)[valid]

    return stem


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    s = params["pretrain_expert"]
    corpus = AVCorpus(project_root() / params["prepare_2d"]["out"])
    dataset = AVDataset(corpus, "train", decode_corpus(corpus, splits=("train",), progress=False))
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[: s["batch_size"]].tolist()
    batch = collate_av([dataset[i] for i in pick])
    fps = float(corpus.manifest["fps"].iloc[0])

    torch.manual_seed(args.seed)
    model = Expert(reader_config(s, "av", fps)).train()
    augment = AugmentConfig(**s["augment"], fps=fps)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    front = model.video_front
    stems = {"conv3d": conv3d_stem(front), "stacked": front._stem}

    def step():
        video, audio = augment_av(
            batch["video"], batch["video_lengths"], batch["audio"], batch["audio_lengths"], augment
        )
        out = model.loss(
            video, batch["video_lengths"], audio, batch["audio_lengths"], batch["tokens"], batch["token_lengths"]
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    seen = {}  # the stem's input (the prepared clip and its valid frames), caught in one forward of the front end

    def catch(x, valid):
        seen.update(x=x.detach(), valid=valid)
        return stems["stacked"](x, valid)

    front._stem = catch
    with torch.no_grad():
        front(batch["video"], batch["video_lengths"])
    x, valid = seen["x"], seen["valid"]

    def stem_only(fn):
        y = fn(x, valid)
        y.backward(torch.ones_like(y))

    times = {f"{k}_{name}": [] for k in ("step", "stem") for name in stems}
    for r in range(args.repeats + 2):
        for name, fn in stems.items():
            front._stem = fn
            start = time.perf_counter()
            step()
            mid = time.perf_counter()
            stem_only(fn)
            if r >= 2:
                times[f"step_{name}"].append(mid - start)
                times[f"stem_{name}"].append(time.perf_counter() - mid)
    med = {f"{k}_s": round(statistics.median(v), 4) for k, v in times.items()}
    print(
        json.dumps(
            {
                **med,
                "step_ratio": round(med["step_stacked_s"] / med["step_conv3d_s"], 3),
                "stem_ratio": round(med["stem_stacked_s"] / med["stem_conv3d_s"], 3),
                "batch_size": len(pick),
                "frames": valid.shape[1],
                "valid_share": round(valid.float().mean().item(), 3),
                "repeats": args.repeats,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
