"""The console: server-rendered pages for auditors and organisation admins under `/console`,
signed in through the cookie session (docs/console.md)."""
