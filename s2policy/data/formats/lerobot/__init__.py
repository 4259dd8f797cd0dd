"""LeRobot v3 datasets without the `lerobot` package: :mod:`.format` (layout, schema checks),
:mod:`.reader`, :mod:`.writer`, :mod:`.video` (mp4 through PyAV) and :mod:`.convert` (import and
export, ``python -m s2policy.data.formats.lerobot.convert``)."""
