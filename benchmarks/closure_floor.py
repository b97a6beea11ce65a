"""How far each model's lips close at bilabials: for every p/b/m of the 3D test utterances, the smallest inner-lip
opening (mm) within the phoneme's interval, for the ground truth, each animator's baseline (train.out/<animator>)
and, for CodeTalker, its VQ-VAE's reconstruction of the ground truth (encoded, quantised, decoded: what the
code predictor could reach at best). A closure is an opening under avguide.metrics.CLOSURE_THRESHOLD_MM.

Prints one JSON line: per source, the median and 10th percentile of that smallest opening and the closure rate.
A diagnostic, not a timing: it reads the corpus and the trained models of the profile in params.yaml.

Usage: python benchmarks/closure_floor.py [--params params.yaml] [--split test]
"""

import argparse
import json

import numpy as np
import torch
from torch.utils.data import DataLoader

from avguide.data.corpus import Corpus
from avguide.data.dataset import TalkingFaceDataset, collate
from avguide.face.template import lip_opening
from avguide.metrics import BILABIAL_VISEME, CLOSURE_THRESHOLD_MM, phoneme_frames
from avguide.models.checkpoint import load_checkpoint
from avguide.models.registry import ANIMATORS
from avguide.params import load_params, project_root, set_threads
from avguide.training.run import predict_split


def vq_reconstructions(model, dataset) -> list[np.ndarray]:
    """CodeTalker's VQ-VAE: the ground truth encoded, quantised and decoded, as (T, V, 3) vertices."""
    out = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=8, collate_fn=collate):
            z = model.encode_motion(model.scaled_offsets(batch), batch["frame_mask"])
            recon = model.decode_codes(model.quantizer(z)[0]) / model.cfg.motion_scale
            verts = batch["templates"][:, None] + recon.view(*recon.shape[:2], -1, 3)
            out += [verts[b, :n].numpy() for b, n in enumerate(batch["n_frames"].tolist())]
    return out


def floors(sequences, rows, phonemes, fps) -> np.ndarray:
    """The smallest opening (mm) within each bilabial of the utterances (rows), in phonemes.csv order."""
    curves = {u: lip_opening(v) for u, v in zip(rows["utterance"], sequences)}
    bilabial = phonemes[(phonemes["viseme"] == BILABIAL_VISEME) & phonemes["utterance"].isin(curves)]
    return np.array(
        [
            1000 * curves[u][phoneme_frames(s, e, fps, len(curves[u]))].min()
            for u, s, e in bilabial[["utterance", "start_s", "end_s"]].itertuples(index=False)
        ]
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    params = load_params(args.params)
    set_threads(params)
    root = project_root()
    corpus = Corpus(root / params["prepare"]["out"])
    phonemes = corpus.phonemes()
    if phonemes is None:
        raise SystemExit(f"{corpus.root}: no phonemes.csv; the bilabials need the synthetic corpus' timings")
    dataset = TalkingFaceDataset(corpus, args.split, cache=True)
    fps = float(corpus.manifest["fps"].iloc[0])
    sources = {}
    for animator in params["train"]["animators"]:
        model = load_checkpoint(*ANIMATORS[animator], root / params["train"]["out"] / animator / "model").eval()
        pred, true, _ = predict_split(model, dataset)
        sources.setdefault("ground_truth", true)
        sources[f"{animator}-baseline"] = pred
        if hasattr(model, "encode_motion"):
            sources[f"{animator}-vq-reconstruction"] = vq_reconstructions(model, dataset)
    out = {}
    for name, seqs in sources.items():
        f = floors(seqs, dataset.rows, phonemes, fps)
        out[name] = {
            "median_mm": round(float(np.median(f)), 2),
            "p10_mm": round(float(np.percentile(f, 10)), 2),
            "closure_rate": round(float((f < CLOSURE_THRESHOLD_MM).mean()), 3),
        }
    print(json.dumps({**out, "bilabials": int(len(f)), "split": args.split, "threshold_mm": CLOSURE_THRESHOLD_MM}))


if __name__ == "__main__":
    main()
