"""mlcore's benchmarks: ``python -m bench.layers`` (``make bench``), ``bench/flow.py`` and
``bench/sweep.py``; their figures are generated under ``bench/results/``."""
