"""Benchmark the linear cross-entropy against F.cross_entropy(q @ e.T, t) (forward, backward, both).

Usage: python benchmarks/benchmark_linear_ce.py [--device cpu|cuda] [--quick] [--json PATH] [--markdown PATH]
"""

import sys

from diffrec.kernels.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["--ops", "linear_cross_entropy", *sys.argv[1:]]))
