-- Seed rows for the lab, applied by `dbpatterns migrate` after `alembic upgrade head`.
-- Idempotent: running it again leaves existing rows (and their credits) as they are.
INSERT INTO users (userid, name, address, credits, version) VALUES
    ('A', 'Alice', '1 Ledger Lane', 1000, 0),
    ('B', 'Bob', '2 Journal Road', 1000, 0)
ON CONFLICT (userid) DO NOTHING;
