"""hypercorn settings for the service:
``hypercorn --config python:dbpatterns.service.hypercorn_config``.

hypercorn closes an HTTP/2 connection after 1,000 requests by default
(``keep_alive_max_requests``). restate-server sends every invocation as a stream over one
long-lived connection, so every thousandth call cut the connection under all streams in flight:
their attempts broke off, possibly after a commit, and Restate retried them. A lab whose point
is what a retry does must not cause retries itself: the limit is lifted.
"""

keep_alive_max_requests = 1 << 62
keep_alive_timeout = 60
