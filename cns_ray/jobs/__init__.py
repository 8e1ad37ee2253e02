"""Ray jobs: calibration scorer actors (:mod:`.calibrate`), the per-tenant scheduler, job submission.

Import the submodules directly; this package imports nothing heavy so ``cns --help`` stays fast.
"""
