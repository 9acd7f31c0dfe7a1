"""Auth0-delegating backend-for-frontend."""
