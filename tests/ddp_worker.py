"""Run by test_training.py as its own program: Lightning's DDP launcher starts rank 1 by running this
file again, so nothing needs pickling. Each rank writes its final weights to OUT/rank<r>.safetensors."""

import sys
from pathlib import Path

import pytorch_lightning as pl
from safetensors.torch import save_file
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from test_training import items, tiny_model  # noqa: E402

from avguide.data.dataset import collate  # noqa: E402
from avguide.training.animator import AnimatorModule, make_trainer  # noqa: E402


class SaveRankWeights(pl.Callback):
    def __init__(self, folder):
        self.folder = Path(folder)

    def on_train_end(self, trainer, module):
        state = {k: v.detach().contiguous().clone() for k, v in module.model.state_dict().items()}
        save_file(state, self.folder / f"rank{trainer.global_rank}.safetensors")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    trainer = make_trainer(
        {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 3},
        out,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[SaveRankWeights(out)],
    )
    trainer.fit(AnimatorModule(tiny_model(), lr=1e-3), DataLoader(items(), batch_size=2, collate_fn=collate))
