"""Benchmark the inner-product top-K against torch.topk(q @ e.T) and, on CPU, faiss IndexFlatIP.

Usage: python benchmarks/benchmark_topk.py [--device cpu|cuda] [--quick] [--json PATH] [--markdown PATH]
"""

import sys

from diffrec.kernels.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["--ops", "inner_product_topk", *sys.argv[1:]]))
