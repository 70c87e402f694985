"""The handwritten-digit ConvNet (PyTorch's MNIST example), for 1x28x28 inputs and 10 classes.

TorchServe builds it with no arguments and loads a state_dict into it; it returns log-probabilities.
"""

import torch
from torch import nn
from torch.nn import functional as F


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3)  # 28x28 -> 26x26
        self.conv2 = nn.Conv2d(16, 32, 3)  # 26x26 -> 24x24, max-pooled to 12x12
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(32 * 12 * 12, 64)  # 4608 -> 64
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)
