"""The HyperCore simulator: a real HTTPS REST server with cluster state on disk.

Nouns: a *node* is one HTTPS port of the cluster; the *model* is the cluster state
(VMs, block devices, snapshots, tasks, virtual disks) kept as JSON plus sparse disk
files; a *layer* is a snapshot's frozen (hard-linked) disk file; the *write log*
records guest writes per snapshot epoch and answers snapDiff; *faults* are runtime
switches that make nodes or calls misbehave. Imported by cli/sim.py, cli/demo.py,
tests and benchmarks only. See docs/simulator.md.
"""

from hcbak.sim.faults import Faults
from hcbak.sim.simulator import Simulator

__all__ = ["Faults", "Simulator"]
