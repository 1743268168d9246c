"""Training with PyTorch Lightning (the ``train`` extra): module, loss, runner."""
