"""Test-wide settings."""

import datasets.config

# A full pass over a shuffled multi-shard stream ends with `time.sleep(SLEEP_TIME_ON_THREADS_SHUTDOWN)` (5 s by
# default) in `datasets`; every streaming test would pay it once per epoch and iterator.
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
