"""Benchmark mlcore's fast conv / pool layers and training step against PyTorch (CPU), and the
naive layers, each engine in its own process.

    python -m bench.layers [--threads 2] [--rounds 25] [--quick] [--memory] [--profile]
                           [--no-naive] [--no-torch] [--no-plain]

Two engines in one process share cores, thread pools and settings, and their timings say
more about their interference than about either. So every engine runs in its own worker
process (``python -m bench.layers --worker KIND``) with its own defaults:

* the **mlcore** worker (the fast layers and the ThreeLayerConvNet step) sets the thread
  counts and nothing else: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
  ``MKL_NUM_THREADS`` = ``--threads``, before numpy is imported, as the torch worker sets
  ``torch.set_num_threads`` (mlcore needs no other setting: nothing its step runs calls
  numpy's BLAS, so its kernels' own thread pool is the only one at work);
* the **plain** worker is mlcore imported plainly, as a notebook gets it: the mlcore worker's
  fast layers and step with nothing set by the harness, not even the thread counts (what the
  environment sets, it inherits), its "plain" column beside "fast";
* the **torch** worker changes nothing but ``torch.set_num_threads(--threads)``;
* the **naive** worker (mlcore's naive layers, which call numpy's BLAS) has the mlcore
  worker's settings.

No worker (nor the ``--memory`` / ``--profile`` child) inherits ``OPENBLAS_CORETYPE`` or
``OPENBLAS_L2_SIZE`` (``MACHINE_PINS``): the machine this project is developed on pins
OpenBLAS's kernels with them for old builds, a user's machine does not. The parent process
keeps its environment; each worker reports the OpenBLAS kernel numpy runs in it
(threadpoolctl's ``architecture``, what ``OPENBLAS_VERBOSE=2`` prints as ``Core:``) and the
results' machine description names it (``openblas_kernel``).

The parent process only coordinates: for each case it has every worker warm up and pick how
many back-to-back calls make one sample (``--sample-ms``, 100 ms by default: several training
steps, so that the first call after another worker's turn, with caches the other worker
evicted, weighs little; ~8 ms with ``--quick``), then runs the rounds,
asking one worker at a time for a sample (the order alternates every round). Before each
hand-over the parent waits until none of the previous worker's threads is runnable (read from
/proc: PyTorch's OpenMP keeps its threads spinning for about 10 ms after a parallel loop
(mlcore's own pool sleeps at once), numpy's OpenBLAS (the naive layers) for about 0.1 s
after a product, and a worker timed beside them shares the two cores), then a short pause
more; the
median and longest wait per worker (each at least the ~1 ms between two looks) are in the
results, and a warning when a wait gave up or /proc could not tell. Each figure is the median over
rounds; each fast/torch figure is the median of the per-round ratios with their min-max. The
table is printed (with rich if available) and written to bench/results/layers.json and
layers.md with the machine description, the load average and each worker's thread pools.

``--memory`` also runs one epoch of ThreeLayerConvNet training steps (batch 50) over a
49,000 x 3 x 32 x 32 float32 array in a child process with the mlcore worker's settings, and
reports the peak memory (tracemalloc peak and peak RSS growth) against the dataset size.

``--profile`` also times the mlcore float32 training step part by part (the conv layers and
their implicit-GEMM kernels, pool, relu, the affine products through mlcore.nn.linalg.matmul
and their bias terms, softmax, adam per parameter, and the Python between them) and writes
bench/results/profile.{json,md}.
"""
