-- Bearer tokens for `singularity-ops serve` over HTTP. Only a token's SHA-256 is kept (tokens
-- are 256 random bits, so a fast hash is enough): a leaked table grants nothing. They live in
-- the database so that every replica of the server behind a load balancer accepts the same ones.
CREATE TABLE api_tokens (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    scope text NOT NULL CHECK (scope IN ('read', 'write')),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

COMMENT ON TABLE api_tokens IS 'singularity-ops serve: bearer tokens (hashes only); managed by `singularity-ops token`';
