"""Benchmark the fused λ-noise injection against unfused PyTorch (forward, backward, both).

Usage: python benchmarks/benchmark_noise_inject.py [--device cpu|cuda] [--quick] [--json PATH] [--markdown PATH]
"""

import sys

from diffrec.kernels.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["--ops", "noise_inject", *sys.argv[1:]]))
