"""The engine: what hcbak does with a cluster and a repository, without any terminal.

Nouns:
- run: one `hcbak job run` (runner.py): the jobs it picked (named, all, or due), run
  one after another, each recorded and mailed; with --due, the RPO watch after them.
- job run / session: one job on one cluster into one repository (backup.py), its
  shared state the `Session` (session.py); a job lock keeps two runs of it apart.
- target: a VM the job selects and the disks it reads (selection.py).
- attempt: one try at a VM's point (backup_vm.py): snapshot, each disk (backup_disk.py:
  read plan from snapDiff or a full read, hot-add clone, pipeline), commit.
- journal: what a run records in the state dir before it makes something on the
  cluster (state.py), so the next run removes what a crashed one left (cleanup.py).
- report: what a run did, per job, VM and disk (report.py), printed or mailed.
- restore: a point's disk to a file (restore_disk.py) or the whole VM to a cluster
  (restore_vm.py), both reading blocks through point_reader.py; a point mounted
  read-only through FUSE (mount.py).
- probe: `cluster probe`, every call of a backup and a restore on a scratch VM.

Engine code never prints: it reports through progress events, warning callbacks,
logging and the reports it returns. It imports hypercore, transport and repo, never
cli.
"""
