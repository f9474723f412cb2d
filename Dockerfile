# The dbpatterns service image, used by docker-compose.yml (the service and the migrate job).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml LICENSE ./
COPY dbpatterns ./dbpatterns
COPY migrations ./migrations
COPY db ./db
# The lab's packages are a dependency group (pip 25.1 or newer reads those).
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir -e . --group lab
EXPOSE 9080
CMD ["python", "-m", "dbpatterns.service.serve"]
