"""Who is calling: bearer-token verification, tenancy (organizations, users, memberships) and its dependencies."""
