"""Data: reading CIFAR-10 and synthetic sets, splits, batches, augmentation and preprocessing."""
