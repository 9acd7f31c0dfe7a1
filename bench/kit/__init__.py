"""What the harness and the studies share: loopback checks, server processes and their CPU,
the load generators (wrk, an asyncio one, a fixed-rate one), the stand-in tenant, a private
Postgres cluster, the fault runs' stack. Nothing here imports the harness or a study."""
