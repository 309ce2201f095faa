"""The CeleryExecutor deployment: its topology (one description for docker-compose.yaml and the local
launcher) and the launcher that runs it on this machine against the sandbox (`make up-celery`)."""
