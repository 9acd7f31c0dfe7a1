"""The servers measured next to ours: the floor (bare Starlette and asyncpg) and the peer
(FastAPI with Auth0's SDK). Each runs under uvicorn in a process of its own, started by
import string (bench/harness/launch.py), and uses nothing of the harness."""
