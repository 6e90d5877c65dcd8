-- perdure schema 9: API keys of the server. A key is shown once when it is made; the store keeps
-- its id (the part before the secret) and a SHA-256 of the whole key, never the key.

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    scope         TEXT NOT NULL,         -- read | trigger | admin
    hash          TEXT NOT NULL,         -- hex SHA-256 of the whole key
    created_at    REAL NOT NULL,
    revoked_at    REAL
) WITHOUT ROWID;
