"""The toy-world evaluation: how ``benchmarks/toy_prior.py``, ``toyworld.py`` and ``janus.py``
judge the embedded prior and what is distilled from it, against the toy world's truth.

Modules, each importing only those above it:

* :mod:`~cfd3d.evaluation.toyworld.classifier`: the probe, a CNN trained on ground-truth
  renders that names an image's colour and shape, its data and its labels;
* :mod:`~cfd3d.evaluation.toyworld.judges`: pixel judges (colour segmentation, "X on top
  of / next to Y", a head's face) and the ground-truth renders that check them;
* :mod:`~cfd3d.evaluation.toyworld.samples`: the probe's verdict on the prior's own samples;
* :mod:`~cfd3d.evaluation.toyworld.prompts`: the prompts a result is judged against;
* :mod:`~cfd3d.evaluation.toyworld.setting`: the evaluation's cameras, sizes and lights;
* :mod:`~cfd3d.evaluation.toyworld.composition`: the judge of two-object results;
* :mod:`~cfd3d.evaluation.toyworld.views`: an object seen by the evaluation, and the
  measures on it (mask IoU, colour, diversity, mesh IoU, the head's face per view);
* :mod:`~cfd3d.evaluation.toyworld.jobs`: one distillation of a benchmark and its cache;
* :mod:`~cfd3d.evaluation.toyworld.summary`: the per-method numbers of the JSON.
"""
