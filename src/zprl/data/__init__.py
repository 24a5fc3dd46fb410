"""Demonstration data: generation, storage formats and loading for pretraining.

Generation lives in :mod:`zprl.data.experts` (scripted experts and quality-tier operators),
:mod:`zprl.data.generate` (``generate_dataset``), :mod:`zprl.data.robomimic_writer` (HDF5 writer and
``validate_robomimic_hdf5``) and :mod:`zprl.data.lerobot_writer`. Submodules are imported explicitly,
so that light modules of this package do not pull in the simulators.
"""
