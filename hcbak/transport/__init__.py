"""Transport: getting a snapshot disk's bytes from the cluster onto this machine.

Nouns:
- hot-add: a snapshot disk cloned onto the worker VM (the VM hcbak runs on) and
  removed again afterwards (hotadd.py), journaled while it exists.
- device: the block device a hot-added clone became, found by its serial or size
  (device.py).
- reader: positioned reads of that device, and which ranges hold data (reader.py).
- qcow2 image: the format a restore streams to the cluster's upload (qcow2.py).

Transport knows no job, repository or config: what it needs is passed in.
"""
