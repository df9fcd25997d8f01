"""Torch-free inference: everything ``python -m seg.predict --onnx`` needs, on numpy, OpenCV and ONNX Runtime.

Nothing in this package imports torch, so a machine without PyTorch can run an exported model
(``python -m seg.export``). The pure-Python pieces are shared with the PyTorch path so that both
compute the same thing once: ``geometry`` (eval resize, sliding windows, test-time scales),
``images`` (the one decoding rule, which seg.data uses too; ``headers`` reads sizes and EXIF orientation),
``outputs`` (output names, writing index / colour / overlay masks and confidence maps, the predict loop;
``colormaps``: their colour tables), ``metadata`` (the settings an exported file carries). ``onnx_predict`` is the
numpy/ONNX Runtime twin of ``seg.models.inference.predict_probs``.
"""
