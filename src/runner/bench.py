"""`python -m runner.bench`: speed benchmarks side by side (runner.commands.bench; importing this module gives that one)."""
import sys

from runner.commands import bench

if __name__ == "__main__":
    sys.exit(bench.main())
sys.modules[__name__] = bench
