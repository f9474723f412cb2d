# The dbpatterns service image, used by docker-compose.yml (the service and the migrate job).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dbpatterns ./dbpatterns
COPY migrations ./migrations
COPY db ./db
RUN pip install --no-cache-dir -e .
EXPOSE 9080
CMD ["python", "-m", "dbpatterns.service.serve"]
