from __future__ import annotations

from dbpatterns.client import Ingress


def test_a_request_through_the_ingress_reaches_the_service(ingress: Ingress) -> None:
    response = ingress.call("simple", "read", "A")
    assert response.status_code == 200, response.text
    assert response.json()["userid"] == "A"
