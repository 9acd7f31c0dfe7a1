"""`python -m bench`: ours, the Auth0 FastAPI peer and the floor, side by side in one run.

One run: a throwaway database (100,000 patients in 1,000 scopes), 1,000 access tokens (one
per user) plus a pool of never-seen tokens, the stand-in tenant, then each server under
uvicorn (uvloop, httptools) with 1 and 2 workers, each scenario driven by wrk at 32 and 64
connections after a warm-up. Everything stops and the database is dropped on the way out,
Ctrl+C and failures included. Only 127.0.0.1 is ever contacted.
"""
