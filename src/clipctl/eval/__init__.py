"""Evaluation: ``passk`` (the estimators, numpy only) and ``driver`` (eval-passk: sampling, grading, files).

Nothing is imported here, so ``import clipctl.eval.passk`` loads numpy and
nothing heavier.
"""
