"""Formats a store converts from and to: robomimic HDF5 (:mod:`.robomimic`) and LeRobot v3
(:mod:`.lerobot`)."""
