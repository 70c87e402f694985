"""marforge: build versioned TorchServe archives from trained PyTorch models, serve, measure and roll them out."""

__version__ = "0.1.0"
