# The MLflow tracking server of infra/compose.yaml: mlflow plus what its Postgres backend (psycopg),
# S3 artifact proxy (boto3) and basic-auth app (Flask-WTF, the mlflow[auth] extra) need.
FROM python:3.11-slim
RUN pip install --no-cache-dir \
        mlflow==3.17.2 "psycopg[binary]==3.3.9" boto3==1.43.117 "Flask-WTF==1.3.0" \
    && useradd --create-home mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
