"""Benchmark mlcore's fast conv / pool layers and training step against PyTorch (CPU), and the
naive layers, each engine in its own process.

    python -m bench.layers [--threads 2] [--rounds 25] [--quick] [--memory] [--profile]
                           [--no-naive] [--no-torch] [--no-plain]

Two engines in one process share cores, thread pools and settings, and their timings say
more about their interference than about either. So every engine runs in its own worker
process (``python -m bench.layers --worker KIND``) with its own defaults:

* the **mlcore** worker (fast layers, the GEMM share, the ThreeLayerConvNet step) sets what
  mlcore's entry points set: ``OMP_WAIT_POLICY=passive`` and ``OPENBLAS_THREAD_TIMEOUT=20``
  (unless the environment sets them) and ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` =
  ``--threads``, before numpy is imported;
* the **plain** worker is mlcore imported plainly, as a notebook gets it: the mlcore worker's
  fast layers and step with nothing set by the harness (no ``OMP_WAIT_POLICY``,
  ``OPENBLAS_THREAD_TIMEOUT`` nor thread counts; what the environment sets, it inherits),
  its "plain" column beside "fast";
* the **torch** worker changes nothing but ``torch.set_num_threads(--threads)``;
* the **naive** worker (mlcore's naive layers) has the mlcore worker's settings.

No worker (nor the ``--memory`` / ``--profile`` child) inherits ``OPENBLAS_CORETYPE`` or
``OPENBLAS_L2_SIZE`` (``MACHINE_PINS``): the machine this project is developed on pins
OpenBLAS's kernels with them for old builds, a user's machine does not. The parent process
keeps its environment; each worker reports the OpenBLAS kernel it runs (threadpoolctl's
``architecture``) in the results.

The parent process only coordinates: for each case it has every worker warm up and pick how
many back-to-back calls make one sample (``--sample-ms``, 100 ms by default: several training
steps, so that the first call after another worker's turn, with caches the other worker
evicted, weighs little; ~8 ms with ``--quick``), then runs the rounds,
asking one worker at a time for a sample (the order alternates every round). Before each
hand-over the parent waits until none of the previous worker's threads is runnable (read from
/proc: OpenBLAS keeps its threads spinning for about 0.1 s after a GEMM, PyTorch's OpenMP for a
about 8 ms, and a worker timed beside them shares the two cores), then a short pause more; the
median and longest wait per worker (each at least the ~1 ms between two looks) are in the
results, and a warning when a wait gave up or /proc could not tell. Each figure is the median over
rounds; each fast/torch figure is the median of the per-round ratios with their min-max. The
table is printed (with rich if available) and written to bench/results/layers.json and
layers.md with the machine description, the load average and each worker's thread pools.

``--memory`` also runs one epoch of ThreeLayerConvNet training steps (batch 50) over a
49,000 x 3 x 32 x 32 float32 array in a child process with the mlcore worker's settings, and
reports the peak memory (tracemalloc peak and peak RSS growth) against the dataset size.

``--profile`` also times the mlcore training step phase by phase (per layer: im2col, GEMM,
col2im, pool, affine, relu, softmax, adam, and the Python between them) and writes
bench/results/profile.{json,md}.
"""
