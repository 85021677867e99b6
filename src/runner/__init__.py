"""runner: a Hydra-driven experiment runner for studying how neural networks are trained on CIFAR-10.

Importing this package is cheap on purpose (no torch): `python -m runner --cfg job` must answer instantly.
"""

import time

__version__ = "0.1.0"

# When the process got as far as importing runner (~50 ms after it started): the origin of `startup_s`.
IMPORTED_AT = time.time()
