"""Data: reading CIFAR-10 and synthetic sets, splits, batches, augmentation, preprocessing, and atomic files
(checkpoints, caches, tables) read back without running code."""
