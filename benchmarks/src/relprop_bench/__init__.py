"""Benchmarks of explanation quality that run on a CPU in minutes, with torch alone.

- :mod:`~relprop.bench.cluttered`: the cluttered-digits data set (images, labels, boxes);
- :mod:`~relprop.bench.models`: VGG-style ReLU nets for it, their training and weight cache;
- :mod:`~relprop.bench.presets`: the rows (LRP presets, other methods, controls);
- :mod:`~relprop.bench.localisation`: μ, μ_w, μ<0.25 and AOPC of every LRP preset and
  attribution method (``relprop bench localisation``);
- :mod:`~relprop.bench.stats`: hierarchical bootstrap CIs; :mod:`~relprop.bench.report`: the
  markdown table and the curve plot; :mod:`~relprop.bench.plot`: a line-plot rasteriser.
"""
