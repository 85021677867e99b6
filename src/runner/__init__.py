"""runner: a Hydra-driven experiment runner for studying how neural networks are trained on CIFAR-10.

Importing this package is cheap on purpose (no torch): `python -m runner --cfg job` must answer instantly.
"""

__version__ = "0.1.0"
