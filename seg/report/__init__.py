"""The evaluation report (``python -m seg.evaluate --report DIR``): pictures of where a model fails and how sure
it is, from the same single evaluation pass and confusion matrix as ``metrics.json``.

* :mod:`seg.report.collect` - what the pass gathers beyond :class:`seg.evaluation.Scores`, streaming and synced
  over DDP: calibration bins (ECE) and the K worst images.
* :mod:`seg.report.figures` - the charts: confusion matrix (whole up to 30 classes, the top confusions beyond),
  per-class IoU with bootstrap intervals over images, per-image mIoU histogram, reliability diagram.
* :mod:`seg.report.panels` - one panel row per worst image: image | ground truth | prediction | error map.
* :mod:`seg.report.page` - the folder: ``confusion.csv``, the PNGs, ``report.json`` and a self-contained
  ``report.html``.
"""
