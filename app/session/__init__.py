"""Cookie sessions: the backend-for-frontend proper (docs/sessions.md).

The browser holds one `HttpOnly` cookie; the tokens stay here, encrypted in Postgres.
`endpoints` and `signin` serve `/auth/*`; `resolver` turns a cookie into an access token for
`/api` routes (app/auth/requires.py) and checks CSRF; `service` starts, refreshes (once across
every copy) and ends sessions, recording `events`; `cache` keeps live sessions in the process,
true through `listener`'s LISTEN/NOTIFY; `oauth` is authlib's client for the tenant;
`idtoken` checks ID and logout tokens with the bearer verifier's JWKS; `store` owns the
tables and `crypto` the keys.
"""
