-- perdure schema 9 (PostgreSQL): API keys of the server. A key is shown once when it is made;
-- the store keeps its id (the part before the secret) and a SHA-256 of the whole key, never the
-- key.

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    scope         text NOT NULL,         -- read | trigger | admin
    hash          text NOT NULL,         -- hex SHA-256 of the whole key
    created_at    double precision NOT NULL,
    revoked_at    double precision
);
