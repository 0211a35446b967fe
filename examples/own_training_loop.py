"""The suite as a library: its augmentation and DCL loss in a plain PyTorch loop (README "Use as a library").

    python examples/own_training_loop.py          # 200 steps on the bundled digits, under a minute on a CPU
"""
import sys

import torch
from torch import nn

from cl_suite.data import load_digits
from cl_suite.data.augment import AugmentConfig, TwoViewAugment
from cl_suite.losses import ContrastiveLoss
from cl_suite.samplers import DebiasedSampler


def main(steps: int = 200, batch_size: int = 128) -> list[float]:
    images = load_digits(image_size=16).pretrain.images  # (1437, 3, 16, 16) uint8
    augment = TwoViewAugment(AugmentConfig(crop_size=16, crop_scale=(0.3, 1.0), flip_p=0.0, mean=[0.3] * 3,
                                           std=[0.3] * 3))
    encoder = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 64))
    criterion = ContrastiveLoss(DebiasedSampler(tau_plus=0.1), temperature=0.5)  # DCL; UniformSampler: NT-Xent
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)  # the augmentation's random draws
    losses = []
    for _ in range(steps):
        x1, x2 = augment(images[torch.randint(len(images), (batch_size,), generator=generator)], generator)
        loss = criterion(encoder(x1), encoder(x2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    losses = main(*map(int, sys.argv[1:]))
    print(f"loss: first 10 steps {sum(losses[:10]) / 10:.3f}, last 10 steps {sum(losses[-10:]) / 10:.3f}")
