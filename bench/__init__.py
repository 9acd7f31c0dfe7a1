"""The benchmark: `python -m bench` measures ours, the peer and the floor side by side;
the studies each measure one question on their own.

- `harness/`: the side-by-side run: its model, each target's server, the preparation, the
  runner, the profile and the Markdown report;
- `studies/`: the stand-alone studies, each `python -m bench.studies.<name>`
  (`python -m bench.failover` is `studies/failover.py`);
- `auditlog/`: an audit log grown to production's shape before anything is measured;
- `targets/`: the floor and the peer, the servers measured next to ours;
- `kit/`: what the others share: loopback checks, server processes and their CPU, the load
  generators, the stand-in tenant, a private Postgres cluster, the fault runs' stack.

Imports run downhill in that order (`.importlinter`).
"""
