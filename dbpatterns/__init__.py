"""dbpatterns: how Restate durable handlers should read and write PostgreSQL, under faults."""
