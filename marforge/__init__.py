"""marforge: build versioned TorchServe archives from trained PyTorch models, serve, measure and roll them out."""

__version__ = "0.2.0"
