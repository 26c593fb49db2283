"""Training: the LightningModule, losses, the identity recipe and its callbacks."""
