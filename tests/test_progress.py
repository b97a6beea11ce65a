"""A stage shows its progress while it runs: every trainer prints one line per epoch with its logged figures."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from avguide.training.animator import make_trainer


class Line(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.w(x), y)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_each_epoch_prints_one_line_with_its_loss(tmp_path, capsys):
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 16)[:, None]
    data = DataLoader(TensorDataset(x, 3 * x), batch_size=4)
    trainer = make_trainer(
        {"accelerator": "cpu", "devices": 1, "max_epochs": 3},
        tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(Line(), data)
    lines = [line for line in capsys.readouterr().out.splitlines() if ": epoch " in line]
    assert [line.split(": epoch ")[1].split()[0] for line in lines] == ["1/3", "2/3", "3/3"]
    losses = [float(line.split("train/loss ")[1]) for line in lines]
    assert losses[2] < losses[0]
