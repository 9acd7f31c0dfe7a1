"""Remote APIs: declared routes forwarded with the right token (docs/remote-apis.md)."""
