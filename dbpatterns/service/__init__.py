"""What runs the lab's services: the app, its server, the pool, the boundary, the
failpoints, the SQL trace, request identity, the janitor, the schema and its migration."""
