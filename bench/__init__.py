"""The agent's benchmark: ``python -m bench [--quick] [--out DIR]`` (``make bench``).

Every section runs in one process on one machine, so the numbers that matter are the RATIOS
against baselines measured in the same run (pipeline fps vs the decode + inference limit,
detector overhead vs bare inference, ...); absolute timings move with the machine's load.
Peak memory is measured in a fresh subprocess (:mod:`bench.rss`) so the other sections do not
inflate it. Results go to ``<out>/bench.json`` and a table on stdout.
"""
