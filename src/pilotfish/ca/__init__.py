"""The mesh's certificate authority: a pure issuer, its storage, and what agents ask of it."""
