"""Benchmarks of explanation quality that run on a CPU in minutes, with torch alone.

A package of its own (``benchmarks/`` of the relprop repository; ``pip install -e
benchmarks/``), not part of the ``relprop`` library; it was ``relprop.bench``. Command line:
``relprop-bench`` (:mod:`~relprop_bench.cli`).

- :mod:`~relprop_bench.cluttered`: the cluttered-digits data set (images, labels, boxes);
- :mod:`~relprop_bench.models`: VGG-style ReLU nets for it, their training and weight cache;
- :mod:`~relprop_bench.presets`: the rows (LRP presets, other methods, controls);
- :mod:`~relprop_bench.localisation`: μ, μ_w, μ<0.25 and AOPC of every LRP preset and
  attribution method (``relprop-bench localisation``);
- :mod:`~relprop_bench.stats`: hierarchical bootstrap CIs; :mod:`~relprop_bench.report`: the
  markdown table and the curve plot; :mod:`~relprop_bench.plot`: a line-plot rasteriser;
- :mod:`~relprop_bench.sentiment`: generated reviews with known evidence words and a word CNN;
  :mod:`~relprop_bench.minilm` and :mod:`~relprop_bench.token_deletion`: token deletion on a
  sentiment probe over the pretrained all-MiniLM-L6-v2.
"""
