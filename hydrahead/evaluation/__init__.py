"""hydrahead.evaluation: the quality benchmark and the synthetic persona world it can run on.

Not part of the device runtime: it needs the ``[bench]`` extra (``pip install
"hydrahead[bench]"``) for BM25 and charts.
"""
