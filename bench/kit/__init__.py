"""What the harness and the studies share: loopback checks, server processes and their CPU,
the load generators (wrk, an asyncio one, a fixed-rate one), the stand-in tenant, a private
Postgres cluster and its standby, the fault runs' stack; for the failover runs a Patroni
cluster, HAProxy, copies of the service and the audit checks. Nothing here imports the
harness or a study."""
