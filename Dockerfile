# usersync image for the docker-compose (CeleryExecutor) deployment.
#
# Extends the official Airflow image with the project's pinned dependencies
# (requirements.lock pins apache-airflow==3.3.2, the same version as the base
# image, so pip keeps Airflow itself as it is) and bakes in the sandbox APIs (and tools/)
# and the SQL files. dags/, plugins/ and include/ are also bind-mounted by
# docker-compose.yaml so edits show up without a rebuild.
FROM apache/airflow:3.3.2-python3.11

USER airflow

COPY --chown=airflow:0 requirements.lock /requirements.lock
RUN pip install --no-cache-dir -r /requirements.lock

COPY --chown=airflow:0 sandbox/ /opt/airflow/sandbox/
COPY --chown=airflow:0 tools/ /opt/airflow/tools/
COPY --chown=airflow:0 include/ /opt/airflow/include/

# Mount point of the shared "staging" volume. Creating it in the image makes a
# fresh named volume inherit this ownership; group 0 gets write access because
# the compose file runs containers as ${AIRFLOW_UID}:0.
RUN mkdir -p /opt/airflow/staging && chmod 0775 /opt/airflow/staging

# /opt/airflow on the import path so `python -m sandbox ...` works from any
# working directory.
ENV PYTHONPATH="/opt/airflow${PYTHONPATH:+:${PYTHONPATH}}" \
    USERSYNC_STAGING_URL="file:///opt/airflow/staging"

WORKDIR /opt/airflow
