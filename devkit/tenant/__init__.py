"""A local stand-in Auth0 tenant: `create_tenant_app(TenantState(...))` (`app`) serves what the
service uses of a tenant, on loopback, with tokens minted by `devkit.keys.TokenMinter`."""
